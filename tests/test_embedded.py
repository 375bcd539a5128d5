"""The embedded nx-27017 server: started on demand, shared through the data dir, data kept."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from pymongo import MongoClient

from gql_api.embedded import EmbeddedMongo
from tests.conftest import api_process
from tests.test_delivery import _demo


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


def test_the_server_outlives_the_process_that_started_it_while_others_use_it(data_dir):
    first, second = EmbeddedMongo(data_dir), EmbeddedMongo(data_dir)
    uri = first.start()
    try:
        assert second.start() == uri
        pid = int((data_dir / "nx-27017.pid").read_text())
        first.stop()  # it started the server, but the second still uses it
        assert second.running_uri() == uri
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.kept.things.insert_one({"name": "still here"})
    finally:
        second.stop()  # the last user: stops it, though another object started it
    assert second.running_uri() is None
    assert not (data_dir / "mongodb.uri").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited, and reaped


def test_a_restarted_server_takes_the_port_recorded_for_the_data_dir(data_dir):
    first = EmbeddedMongo(data_dir)
    uri = first.start()
    pid = int((data_dir / "nx-27017.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # a crash: the record stays behind
    first._process.wait()  # reap our own child
    again = EmbeddedMongo(data_dir)
    try:
        # Clients still hold the recorded URI: the same port lets them reconnect by themselves.
        assert again.start() == uri
    finally:
        again.stop()
        first.stop()
    assert again.running_uri() is None


@pytest.mark.slow
async def test_stopping_the_replica_that_started_the_database_leaves_the_other_serving(tmp_path):
    first = api_process(tmp_path)
    a = await first.__aenter__()
    stopped = False
    try:
        async with api_process(tmp_path) as b, httpx.AsyncClient(base_url=b.url, timeout=30) as http:
            assert any("Started the embedded" in line for line in a.output)
            assert not any("Started the embedded" in line for line in b.output)  # b reuses a's server
            token = (await _demo(tmp_path))["users"]["alice"]["token"]
            request = {"json": {"query": "{ me { username } }"}, "headers": {"Authorization": token}}
            assert (await http.post("/graphql", **request)).json() == {"data": {"me": {"username": "alice"}}}

            stopped = True
            await first.__aexit__(None, None, None)  # Ctrl-C, and wait for it to exit
            assert a.process.returncode == 0, "\n".join(a.output)

            # A test of recovery, not of speed: the bound is generous.
            deadline = time.monotonic() + 30
            while (body := (await http.post("/graphql", **request)).json()).get("errors"):
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.2)  # polling another process's state: there is no event to wait on
            assert body == {"data": {"me": {"username": "alice"}}}
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)
    # The last replica out stopped the server: nothing is left running.
    assert EmbeddedMongo(tmp_path).running_uri() is None
    assert not (tmp_path / "mongodb.uri").exists()
