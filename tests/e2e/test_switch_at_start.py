"""Management calls never block on the node's start-up and never say "failed" for what
they then do: `/switch` the moment `/healthz` answers, on a box whose framework probe
is slow, is answered with success, the model loads later, and retries make no second
backend."""

from __future__ import annotations

import json
import textwrap

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import Client, backend_pb2, model_info

# Every framework probe of the node (a child `python -c "import aiserving.backends.X"`)
# takes 20 s longer, then leaves a mark: a box with slow storage and big frameworks.
SLOW_PROBE = textwrap.dedent('''\
    import os
    import sys
    import time

    if "import aiserving.backends." in " ".join(getattr(sys, "orig_argv", [])):
        open(os.environ["PROBE_MARK"] + ".started", "a").close()
        time.sleep(20)
        with open(os.environ["PROBE_MARK"], "a") as fh:
            fh.write("probed\\n")
''')


def _slow_probe_env(tmp_path) -> tuple[dict, object]:
    folder = tmp_path / "slow-probe"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SLOW_PROBE)
    mark = tmp_path / "probed"
    return {"PYTHONPATH": str(folder), "PROBE_MARK": str(mark)}, mark


def test_switch_at_start_answers_success_at_once_and_retries_make_one_backend(
        storage, tmp_path, start_node):
    write_bundle(storage, name="tiny", seed=2)
    image = write_image(tmp_path / "a.png", seed=2)
    env, mark = _slow_probe_env(tmp_path)
    node = start_node(storage, env=env)  # returns once /healthz answers
    answers = [node.post("/api/v1alpha/switch", {"btype": "pytorch", "model": "tiny"},
                         timeout=10) for _ in range(4)]  # the call and three retries
    assert mark.with_suffix(".started").exists() and not mark.exists(), \
        "answered while the framework probe still ran"
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.json()["status"] for a in answers} == {"success"}
    assert {a.json()["bid"] for a in answers} == {"0"}  # one backend, whatever the retries
    node.wait_switch("0")  # loaded later
    assert node.detect(image).json()["status"] == "success"
    assert node.get("/api/v1alpha/switch", params={"bid": "1"}).status_code != 200
    assert node.get("/readyz").status_code == 200


def test_grpc_loads_do_not_wait_for_the_framework_probe(storage, tmp_path, start_node):
    tiny = write_bundle(storage, name="tiny", seed=3)
    env, mark = _slow_probe_env(tmp_path)
    node = start_node(storage, env=env)
    client = Client(node)
    try:
        made = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl=tiny.record.impl))
        assert made.code == 0, made.msg
        loaded = client.backend.ReloadModelOnBackend(backend_pb2.LoadRequest(
            bid=made.msg, model=model_info(tiny.record)))
        assert mark.with_suffix(".started").exists() and not mark.exists(), \
            "answered while the framework probe still ran"
        assert loaded.code == 0, loaded.msg
        client.wait_running(made.msg)
        # A type the node does not know is refused at once, probe or not.
        unknown = client.backend.InitializeBackend(backend_pb2.BackendInfo(impl="caffe.model"))
        assert unknown.code != 0 and "caffe" in unknown.msg
        listed = json.loads(client.backend.ListBackend(
            backend_pb2.BackendInfo(bid=made.msg)).status)
        assert listed["0"] == 4
    finally:
        client.close()
