"""The embedded nx-27017 server: started on demand, shared through the data dir, data kept."""

from __future__ import annotations

import pytest
from pymongo import MongoClient

from gql_api.embedded import EmbeddedMongo


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.mark.slow
def test_a_second_instance_reuses_the_running_server_and_data_survives_a_restart(data_dir):
    first = EmbeddedMongo(data_dir)
    uri = first.start()
    try:
        second = EmbeddedMongo(data_dir)
        assert second.start() == uri
        assert first.owned and not second.owned
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.kept.things.insert_one({"name": "survivor"})
        second.stop()  # not its server: nothing happens
        assert first.running_uri() == uri
    finally:
        first.stop()
    assert first.running_uri() is None

    again = EmbeddedMongo(data_dir)
    uri = again.start()
    try:
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            assert client.kept.things.find_one({"name": {"$eq": "survivor"}}) is not None
    finally:
        again.stop()
