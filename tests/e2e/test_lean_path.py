"""The REST front routes from a cached copy of the backends' routes: it must lose
nothing when a backend changes under it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.support.bundles import reference, write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2

CLIENTS = 8


def _which(scores, expected: dict) -> str:
    for name, want in expected.items():
        if np.allclose(scores, want, rtol=1e-4, atol=1e-5):
            return name
    raise AssertionError(f"scores {scores} are no model's: {expected}")


def test_a_reload_under_load_answers_every_request_by_one_model(storage, tmp_path, start_node):
    first = write_bundle(storage, name="first", seed=11)
    second = write_bundle(storage, name="second", seed=12)
    image = write_image(tmp_path / "photo.png", seed=5)
    expected = {"first": reference(first, image), "second": reference(second, image)}
    node = start_node(storage, env={"AISRV_BATCH_SIZE": "4"})
    bid = node.switch(btype="pytorch", model="first")
    node.wait_switch(bid)
    switched = threading.Event()
    answers: list[list[str]] = [[] for _ in range(CLIENTS)]

    def client(n: int) -> None:
        # Each client goes on until it has seen the second model answer a few times.
        while answers[n].count("second") < 5:
            response = node.detect(image, bid=bid)
            assert response.status_code == 200, response.text
            answers[n].append(_which(response.json()["result"]["scores"], expected))
            assert len(answers[n]) < 2000, "the reload never took over"

    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        futures = [pool.submit(client, n) for n in range(CLIENTS)]

        def reload() -> None:
            while sum(len(a) for a in answers) < 40:  # well under way first
                threading.Event().wait(0.02)
            assert node.switch(bid=bid, model="second") == bid
            switched.set()

        pool.submit(reload).result()
        for future in futures:
            future.result()  # re-raises a client's failure
    assert switched.is_set()
    for seen in answers:
        # Every request was answered; once a caller saw the new model, its later
        # requests never went back to the old one.
        assert seen[0] == "first"
        turn = seen.index("second")
        assert set(seen[turn:]) == {"second"}, seen


def test_a_cached_route_to_a_terminated_backend_is_a_clear_error(storage, tmp_path, start_node):
    write_bundle(storage, name="tiny", seed=13)
    image = write_image(tmp_path / "photo.png", seed=6)
    node = start_node(storage, env={"AISRV_REQUEST_TIMEOUT_S": "60"})
    bid = node.switch(btype="pytorch", model="tiny")
    node.wait_switch(bid)
    # Every front process has this route cached after a few requests.
    for _ in range(8):
        assert node.detect(image, bid=bid).status_code == 200
    client = Client(node)
    try:
        done = client.backend.TerminateBackend(backend_pb2.BackendInfo(bid=bid))
        assert done.code == 0, done.msg
    finally:
        client.close()
    for _ in range(4):
        # A hang would run into the request's own 20 s time-out and fail the test.
        refused = node.post("/api/v1alpha/detect", {"path": str(image), "bid": bid}, timeout=20)
        assert refused.status_code == 404, refused.text
        assert f"no backend {bid}" in refused.json()["message"]
