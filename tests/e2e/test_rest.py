"""The legacy REST API end to end: node as a subprocess, real redis, real torch, real HTTP."""

import numpy as np
import pytest

from tests.support.bundles import reference, write_bundle, write_image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One node with two models, shared by the tests of this module (in order)."""
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("rest")
    storage = root / "storage"
    alpha = write_bundle(storage, name="alpha", labels=["cat", "dog", "bird"], seed=1)
    beta = write_bundle(storage, name="beta", labels=["red", "green"], seed=2,
                        mode="structureEmbed")
    images = [write_image(root / f"img{n}.png", seed=n) for n in range(4)]
    node = NodeProcess(storage).start()
    yield {"node": node, "alpha": alpha, "beta": beta, "images": images, "root": root}
    node.stop()


def test_nothing_is_ready_before_a_switch(world):
    node = world["node"]
    assert node.get("/healthz").status_code == 200
    ready = node.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    answer = node.detect(world["images"][0])
    assert answer.status_code == 503
    assert "switch" in answer.json()["message"]


def test_switch_walks_through_loading_to_loaded(world):
    node = world["node"]
    response = node.post("/api/v1alpha/switch",
                         {"btype": "pytorch", "model": "alpha", "mode": "structureSplit"})
    assert response.json() == {"status": "success", "bid": "0"}
    seen = node.wait_switch()
    assert seen[0]["status"] in ("loading", "preheating")  # it returned before loading was done
    last = dict(seen[-1])
    sizing = last.pop("sizing")  # beside the contract's fields: how the backend was sized
    assert last == {"model": "alpha", "status": "loaded", "error": "", "bid": "0"}
    assert sizing["processes"] == 1 and sizing["batchsize"] >= 1
    assert node.get("/readyz").status_code == 200


def test_detect_returns_the_bundles_post_processing_output(world):
    node, alpha = world["node"], world["alpha"]
    for path in world["images"]:
        answer = node.detect(path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "success" and body["message"] == ""
        assert body["result"]["path"] == str(path)
        np.testing.assert_allclose(body["result"]["scores"], reference(alpha, path), rtol=1e-4, atol=1e-5)
        assert body["result"]["label"] in alpha.record.labels


def test_results_are_kept_in_redis_db5_under_the_uuid(world):
    import json

    import redis

    node = world["node"]
    body = node.detect(world["images"][0]).json()
    db5 = redis.Redis(unix_socket_path=str(node.storage / "run" / "redis.sock"), db=5)
    assert json.loads(db5.get(body["uuid"])) == body["result"]
    assert db5.ttl(body["uuid"]) > 0


def test_a_second_model_switched_in_replaces_the_first(world):
    node, beta = world["node"], world["beta"]
    assert node.switch(bid="0", model="beta") == "0"
    seen = node.wait_switch(bid="0")
    assert seen[-1]["model"] == "beta"
    path = world["images"][1]
    body = node.detect(path).json()
    assert body["result"]["label"] in ("red", "green")
    np.testing.assert_allclose(body["result"]["scores"], reference(beta, path), rtol=1e-4, atol=1e-5)
    # the old model's process drains and exits
    import time

    deadline = time.monotonic() + 30
    while len(node.worker_pids()) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(node.worker_pids()) == 1


def test_labels_that_do_not_fit_the_output_are_a_label_error(world):
    import json

    import redis

    from tests.support.bundles import MODEL_PY

    node = world["node"]
    # A 3-class network shipped with 2 labels: its post-processing runs off the labels' end.
    post = ("def post_dataprocess(f):\n"
            "    return {'named': [f['labels'][i] for i in range(len(f['infers'][0]))]}\n")
    source = write_bundle(node.storage, name="src3", labels=["a", "b", "c"], seed=6)
    short = write_bundle(node.storage, name="short", labels=["a", "b"], seed=6, post=post,
                         extra={"model.py": MODEL_PY.format(classes=3, channels=3),
                                "param.pth": (source.path / "param.pth").read_bytes()})
    bid = node.switch(btype="pytorch", model="short")
    seen = node.wait_switch(bid=bid, until=("failed",))
    assert "labels do not fit" in seen[-1]["error"]
    db = redis.Redis(unix_socket_path=str(node.storage / "run" / "redis.sock"))
    record = json.loads(db.hget(f"aisrv:node:test{node.port}:backends", bid))
    assert record["status"]["0"] == 7 and record["status"]["state"] == 9
    assert short.record.name == record["model"]["name"]


def test_a_failed_load_keeps_the_previous_model_serving(world):
    node = world["node"]
    broken = write_bundle(node.storage, name="broken", labels=["x", "y"], seed=5)
    (broken.path / "param.pth").write_bytes(b"garbage")
    node.switch(bid="0", model="broken")
    seen = node.wait_switch(bid="0", until=("failed",))
    assert seen[-1]["model"] == "broken"
    assert "param.pth" in seen[-1]["error"]
    body = node.detect(world["images"][2], bid="0").json()
    assert body["status"] == "success" and body["result"]["label"] in ("red", "green")
