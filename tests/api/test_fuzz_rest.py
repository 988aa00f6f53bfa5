"""Fuzzing the REST front: Schemathesis over the node's own /openapi.json, then
hostile /detect inputs (traversal paths, odd unicode, broken and bomb images).

Every answer must be one the description documents, never a 5xx; the node
must stay up, and afterwards a good request is served with the right result.
Generation is derandomized, so a failure reproduces run after run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               negative_data_rejection,
                                               response_schema_conformance,
                                               status_code_conformance)

from aiserving.api.rest import openapi
from tests.support.bundles import expected_result, write_bundle, write_image
from tests.support.hostile import LONE_SURROGATE, ODD_STRINGS, TRAVERSAL, broken_images

_PATHS = openapi.document()["paths"]
OPERATIONS = [f"{method.upper()} {path}" for path, ops in _PATHS.items() for method in ops]
# Negative cases only where a request has something to make invalid (a body or
# parameters): an operation that takes nothing has no wrong request to send.
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (f"{method.upper()} {path}", GenerationMode.NEGATIVE) for path, ops in _PATHS.items()
    for method, op in ops.items() if op.get("requestBody") or op.get("parameters")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("fuzzrest")
    storage = root / "storage"
    bundle = write_bundle(storage, name="fuzz-target-model", seed=4)
    # A bundle that declares picture input: the front itself checks images for it.
    pictures = write_bundle(storage, name="fuzz-picture-model", seed=5,
                            modelext={"input": "image"})
    node = NodeProcess(storage, env={"AISRV_BACKEND_MAX_COUNT": "3"}).start()
    bid = node.switch(btype="pytorch", model=bundle.record.name)
    node.wait_switch(bid)
    picture_bid = node.switch(btype="pytorch", model=pictures.record.name)
    node.wait_switch(picture_bid)
    good = write_image(root / "good.png", seed=9)
    yield {"node": node, "root": root, "bundle": bundle, "bid": bid, "good": good,
           "picture_bid": picture_bid, "pictures": pictures}
    node.stop()


@pytest.fixture(scope="module")
def api_schema(served):
    # The description the node serves, not the one in the package: what a client sees.
    return schemathesis.openapi.from_url(served["node"].base + "/openapi.json", timeout=30)


@pytest.mark.parametrize("label, mode", CASES,
                         ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_schemathesis_finds_no_server_error(served, api_schema, label, mode):
    node = served["node"]
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served /openapi.json"
    if mode.is_negative:  # the served description agrees that there is something to break
        assert operation.body or list(operation.iter_parameters()), label
    session = requests.Session()

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=node.base, session=session, checks=CHECKS, timeout=60)

    try:
        fuzz()
    finally:
        session.close()
    assert node.proc.poll() is None, node.log()


@FUZZ
@given(path=st.one_of(st.sampled_from(TRAVERSAL + (LONE_SURROGATE,)), ODD_STRINGS),
       bid=st.one_of(st.none(), st.sampled_from(["0", "1", "2", "-1", "99999999999999999999",
                                            LONE_SURROGATE]),
                     ODD_STRINGS, st.integers(), st.booleans(), st.lists(st.integers())))
def test_hostile_detect_paths_are_refused_cleanly(served, path, bid):
    node = served["node"]
    body = {"path": path} if bid is None else {"path": path, "bid": bid}
    answer = node.post("/api/v1alpha/detect", data=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    assert answer.status_code < 500 or answer.status_code == 503, answer.text
    assert answer.status_code != 200, answer.text  # nothing here is a readable input
    assert answer.json()["status"] == "failed" and "Traceback" not in answer.text


def test_broken_and_bomb_images_are_refused_cleanly(served):
    node, root = served["node"], served["root"]
    good = served["good"].read_bytes()
    for index, data in enumerate(broken_images(good)):
        path = root / f"broken{index}.png"
        path.write_bytes(data)
        for bid in (served["bid"], served["picture_bid"]):
            answer = node.detect(path, bid=bid)
            # The front refuses what it checks (400); vendor pre-processing failing is 422.
            assert answer.status_code in (400, 422), (index, bid, answer.text)
            assert answer.json()["status"] == "failed" and "Traceback" not in answer.text


def test_bodies_that_are_not_json_objects_are_refused(served):
    node = served["node"]
    for data in (b"", b"\x00\xff\xfe", b"[" * 100_000, b'{"path": "\\ud800"}', b"\xef\xbb\xbf{}",
                 b'{"path": 1e999}', b'{"path": "/tmp/x", "bid": {"a": 1}}', b"null",
                 json.dumps({"path": "/tmp/" + "x" * 600_000}).encode(), b"x" * (2 * 1024 ** 2)):
        for route in ("/api/v1alpha/detect", "/api/v1alpha/switch"):
            answer = node.post(route, data=data, headers={"Content-Type": "application/json"})
            assert 400 <= answer.status_code < 500, (route, data[:40], answer.text)
            assert "Traceback" not in answer.text


def test_the_node_still_serves_a_good_request_correctly(served):
    node, bundle, bid, good = served["node"], served["bundle"], served["bid"], served["good"]
    assert node.proc.poll() is None, node.log()
    # No fuzzed request could name the model, so none could have replaced it.
    state = node.get("/api/v1alpha/switch", params={"bid": bid}).json()
    assert state["model"] == bundle.record.name and state["status"] == "loaded", state
    answer = node.detect(good, bid=bid)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    expected = expected_result(bundle, good)
    assert result["label"] == expected["label"] and result["path"] == str(good)
    np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-4, atol=1e-5)
    assert "Traceback" not in node.log() and "unexpected error" not in node.log()
