"""Bad input gets a clear error, and the next good request still succeeds."""

import pytest

from tests.support.bundles import write_bundle, write_image


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("bad")
    storage = root / "storage"
    write_bundle(storage, name="tiny")
    node = NodeProcess(storage).start()
    node.switch(btype="pytorch", model="tiny")
    node.wait_switch()
    good = write_image(root / "good.png", seed=7)
    yield node, root, good
    node.stop()


def _fails(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failed"
    for word in words:
        assert word in body["message"]
    assert "Traceback" not in response.text


def _still_serves(node, good) -> None:
    response = node.detect(good)
    assert response.status_code == 200 and response.json()["result"]["path"] == str(good)


def test_missing_file(served):
    node, root, good = served
    _fails(node.detect(root / "nope.jpg"), 400, "no readable input file at", "nope.jpg")
    _still_serves(node, good)


def test_relative_path(served):
    node, _, good = served
    _fails(node.detect("images/x.jpg"), 400, "not absolute")
    _still_serves(node, good)


def test_file_the_bundle_cannot_read(served):
    # What a file holds is the bundle's business (it declares no picture input).
    node, root, good = served
    text = root / "notes.jpg"
    text.write_text("this is not a picture")
    _fails(node.detect(text), 422, "pre-processing failed", "UnidentifiedImageError")
    _fails(node.detect(root), 400, "not a regular file")
    _still_serves(node, good)


def test_malformed_json_body(served):
    node, _, good = served
    _fails(node.post("/api/v1alpha/detect", data="{not json",
                     headers={"Content-Type": "application/json"}), 400, "JSON object")
    _fails(node.post("/api/v1alpha/detect", {"pth": "/x"}), 400, "'path'")
    _fails(node.post("/api/v1alpha/detect", ["a", "list"]), 400, "JSON object")
    _still_serves(node, good)


def test_unknown_model_and_backend(served):
    node, _, good = served
    _fails(node.post("/api/v1alpha/switch", {"btype": "pytorch", "model": "no-such-model"}),
           404, "no-such-model")
    _fails(node.post("/api/v1alpha/switch", {"bid": "42", "model": "tiny"}), 404, "42")
    _fails(node.post("/api/v1alpha/switch", {"model": "tiny"}), 400, "btype")
    _fails(node.post("/api/v1alpha/switch", {"btype": "caffe", "model": "tiny"}), 400, "caffe")
    _fails(node.post("/api/v1alpha/switch", {"btype": "pytorch", "model": "tiny", "mode": "other"}),
           400, "mode")
    _fails(node.detect(good, bid="42"), 404, "42")
    _fails(node.get("/api/v1alpha/nothing"), 404)
    _still_serves(node, good)


def test_vendor_preprocessing_that_raises(served):
    node, root, good = served
    trap = write_image(root / "raise-on-me.png", seed=3)  # the bundle raises on this name
    _fails(node.detect(trap), 422, "pre-processing failed", "ValueError", "raise-on-me.png")
    _still_serves(node, good)


def test_text_no_file_name_can_hold(served):
    # Found by the REST fuzz: a lone surrogate escape reached redis (500), and a NUL
    # byte in a path raised ValueError in realpath (500).
    node, _, good = served
    for body in ('{"path": "/tmp/\\ud800.png"}', '{"path": "/tmp/x.png", "bid": "\\udc80"}'):
        _fails(node.post("/api/v1alpha/detect", data=body,
                         headers={"Content-Type": "application/json"}), 400, "not valid Unicode")
    _fails(node.detect("/tmp/a\x00b.png"), 400, "no readable input file")
    _still_serves(node, good)
