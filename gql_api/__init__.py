"""gql_api: a live-stream chat API (GraphQL and REST) over MongoDB."""

__version__ = "0.1.0"
