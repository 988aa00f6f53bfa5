"""The console's routes in the REST app (no node): what the page learns about auth, which
calls the guard treats as management, and the state it reads from redis and the store.
The page itself in a browser: tests/e2e/test_console.py."""

import pytest

from aiserving.api.rest.app import create_app
from aiserving.config import Settings
from tests.support.bundles import write_bundle


@pytest.fixture
def make_client(redis_url, tmp_path):
    def make(**values):
        settings = Settings.load(environ={"AISRV_STORAGE": str(tmp_path / "storage")}).as_dict()
        settings["redis.url"] = redis_url
        settings.update(values)
        return create_app(Settings(settings)).test_client()
    return make


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("values, mode", [
    ({}, "none"), ({"auth.token": "t"}, "token"), ({"auth.admin_token": "a"}, "admin"),
    ({"auth.token": "t", "auth.admin_token": "a"}, "token")])
def test_the_open_page_tells_what_to_ask_for(make_client, values, mode):
    page = make_client(**values).get("/console")
    assert page.status_code == 200
    assert f'data-auth="{mode}"'.encode() in page.data
    assert b"{{AUTH_MODE}}" not in page.data


def test_unload_needs_the_admin_token_and_state_the_plain_one(make_client):
    client = make_client(**{"auth.token": "t", "auth.admin_token": "a"})
    refused = client.post("/console/api/unload", json={"bid": "0"}, headers=bearer("t"))
    assert refused.status_code == 401 and "admin token" in refused.json["message"]
    assert client.get("/console/api/state").status_code == 401
    assert client.get("/console/api/state", headers=bearer("t")).status_code == 200
    assert client.post("/console/api/detect", json={}).status_code == 401


def test_unload_only_from_the_admin_addresses(make_client):
    client = make_client(**{"auth.admin_addresses": ["10.0.0.0/8"]})
    refused = client.post("/console/api/unload", json={"bid": "0"})  # the test client: 127.0.0.1
    assert refused.status_code == 403 and "auth.admin_addresses" in refused.json["message"]
    assert client.get("/console/api/state").status_code == 200  # not a management call


def test_state_lists_the_stored_models_without_a_node(make_client, tmp_path):
    bundle = write_bundle(tmp_path / "storage", name="tiny", seed=1)
    state = make_client(**{"auth.admin_token": "a"}).get("/console/api/state")
    assert state.status_code == 200
    body = state.json
    assert body["backends"] == [] and body["queues"] == {} and body["alive"] is False
    assert body["models"] == [{"name": "tiny", "implhash": bundle.record.implhash, "version": "1",
                               "impl": "pytorch.structureSplit", "fullhash": bundle.fullhash,
                               "labels": 3}]
    assert set(body["resources"]) == {"cpu", "mem", "gpu", "dsk"}
