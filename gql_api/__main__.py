import sys

from gql_api.cli import main

sys.exit(main())
