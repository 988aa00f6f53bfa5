"""The `aiserving` client commands against a running node, run as a user runs them:
`python run.py <command>` in a subprocess (the release-pack's run.py under CI's
AISRV_TEST_RUN_PY), checking what they print and their exit status."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.e2e.test_tls import make_cert
from tests.support.bundles import expected_result, write_bundle, write_image
from tests.support.node import RUN_PY, NodeProcess, free_port

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    # Token and TLS on, as a node reached over a network would have them.
    root = tmp_path_factory.mktemp("cli")
    _, _, cert, key = make_cert(root, "node")
    node = NodeProcess(root / "storage", env={"AISRV_AUTH_TOKEN": TOKEN,
                                              "AISRV_TLS_CERT": str(cert),
                                              "AISRV_TLS_KEY": str(key)}).start()
    (node.storage / "input").mkdir()
    node.cert, node.key = cert, key
    yield node
    node.stop()


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, AISRV_TOKEN=TOKEN)
    env.pop("AISRV_SETTINGS", None)
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def cli(node, *args, env=None, cwd=None, where=True, timeout=180):
    """Run `python run.py <args>` aimed at `node`; returns the CompletedProcess."""
    place = ["--node", node.base, "--grpc", f"127.0.0.1:{node.grpc_port}",
             "--cacert", str(node.cert)] if where else []
    return subprocess.run([sys.executable, str(RUN_PY), *args, *place], env=_env(env),
                          capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd or RUN_PY.parent))


def ok(done) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def one_error_line(done, code: int) -> str:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_push_load_status_infer_unload(node, tmp_path):
    bundle = write_bundle(tmp_path / "vendor", name="alpha", labels=["cat", "dog", "bird"], seed=3)
    images = [write_image(node.storage / "input" / f"alpha{i}.png", seed=i) for i in range(3)]

    out = ok(cli(node, "push", str(bundle.path)))
    assert f"pushed alpha as {bundle.fullhash}" in out and "sha256" in out

    listed = ok(cli(node, "models"))
    row = next(line for line in listed.splitlines() if line.startswith("alpha"))
    assert row.split()[:4] == ["alpha", "1", "pytorch.structureSplit", bundle.record.implhash]
    assert row.split()[-1] == "-"  # not loaded yet

    out = ok(cli(node, "load", "alpha"))
    assert out.startswith(f"loaded alpha ({bundle.fullhash}) on backend ")
    bid = out.split()[-1]

    stored = json.loads(ok(cli(node, "models", "--json")))
    (mine,) = [m for m in stored if m["fullhash"] == bundle.fullhash]
    assert mine["loaded_on"] == [bid] and mine["labels"] == ["cat", "dog", "bird"]

    table = ok(cli(node, "status"))
    assert table.splitlines()[0].startswith(f"node {node.base}  version ")
    row = next(line.split() for line in table.splitlines() if line.split()[:2] == [bid, "alpha"])
    assert row[2:] == ["1", "pytorch.structureSplit", "auto", "running", "loaded", "0:running", "0"]
    state = json.loads(ok(cli(node, "status", "--json")))
    (backend,) = [b for b in state["backends"] if b["bid"] == bid]
    assert backend["model"]["fullhash"] == bundle.fullhash
    assert backend["processes"] == {"0": "running"} and backend["queue"] == 0
    assert backend["switch"]["status"] == "loaded"
    assert set(state["resources"]) == {"cpu", "mem", "gpu", "dsk"}

    # One image: its result as JSON, what the model computes.
    result = json.loads(ok(cli(node, "infer", str(images[0]))))
    expected = expected_result(bundle, images[0])
    assert result["label"] == expected["label"] and result["path"] == str(images[0])
    np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-4, atol=1e-5)

    # Many: a table for people, a list for scripts.
    table = ok(cli(node, "infer", *map(str, images), "--bid", bid))
    for image in images:
        assert [str(image), "success"] in [line.split()[:2] for line in table.splitlines()]
    answers = json.loads(ok(cli(node, "infer", *map(str, images), "--json")))
    assert [a["image"] for a in answers] == [str(i) for i in images]
    for image, answer in zip(images, answers):
        assert answer["status"] == "success"
        np.testing.assert_allclose(answer["result"]["scores"],
                                   expected_result(bundle, image)["scores"], rtol=1e-4, atol=1e-5)

    # A failed image is shown in its row; the others still get their results.
    missing = node.storage / "input" / "missing.png"
    done = cli(node, "infer", str(images[0]), str(missing))
    line = one_error_line(done, 1)
    assert "1 of 2 images failed" in line and str(missing) in line
    rows = [line.split()[:2] for line in done.stdout.splitlines()]
    assert [str(images[0]), "success"] in rows and [str(missing), "failed"] in rows

    assert ok(cli(node, "unload", bid)).strip() == f"unloaded backend {bid} (alpha {bundle.fullhash})"
    state = json.loads(ok(cli(node, "status", "--json")))
    assert bid not in [b["bid"] for b in state["backends"]]
    one_error_line(cli(node, "unload", bid), 1)


def test_pull_gives_the_nodes_archive_with_its_checksum(node, tmp_path):
    bundle = write_bundle(tmp_path / "vendor", name="beta", labels=["left", "right"], seed=5,
                          mode="structureEmbed")
    packed = json.loads(ok(cli(node, "bundle", "pack", str(bundle.path), "--json",
                               where=False, cwd=tmp_path)))
    archive = tmp_path / packed["path"]
    assert archive.name == f"{bundle.fullhash}.tar.gz"
    assert packed["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    pushed = json.loads(ok(cli(node, "push", str(archive), "--json")))
    assert pushed["fullhash"] == bundle.fullhash and pushed["sha256"] == packed["sha256"]

    out = tmp_path / "pulled.tar.gz"
    answer = json.loads(ok(cli(node, "pull", bundle.record.implhash, "-o", str(out), "--json")))
    data = out.read_bytes()
    on_node = node.storage / "run" / "exports" / f"{bundle.record.implhash}.tar.gz"
    assert answer["sha256"] == hashlib.sha256(data).hexdigest() \
        == hashlib.sha256(on_node.read_bytes()).hexdigest()
    assert answer["bytes"] == len(data) and answer["fullhash"] == bundle.fullhash
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read()
                 for m in tar.getmembers() if m.isfile()}
    for name in ("model_core", "pre_dataprocess.py", "post_dataprocess.py"):
        assert files[name] == (bundle.path / name).read_bytes()
    assert json.loads(files["configs.json"])["implhash"] == bundle.record.implhash

    # The pulled archive goes back in as another version.
    again = ok(cli(node, "push", str(out), "--version", "2"))
    assert f"as {bundle.record.implhash}-2 " in again
    versions = [m["version"] for m in json.loads(ok(cli(node, "models", "--json")))
                if m["implhash"] == bundle.record.implhash]
    assert versions == ["1", "2"]

    done = cli(node, "pull", bundle.record.implhash, "-o", str(out))
    assert "exists" in one_error_line(done, 2)
    plain = ok(cli(node, "pull", f"{bundle.record.implhash}-2", "-o", str(out), "--force"))
    assert f"pulled beta ({bundle.record.implhash}-2) to {out}" in plain


def test_the_local_node_needs_no_options(node):
    # On the device: address, port and token come from the node's own settings.
    env = {"AISRV_HTTP_PORT": str(node.port), "AISRV_GRPC_ADDRESS": f"[::]:{node.grpc_port}",
           "AISRV_AUTH_TOKEN": TOKEN, "AISRV_TOKEN": None, "AISRV_TLS_CERT": str(node.cert),
           "AISRV_TLS_KEY": str(node.key)}
    assert ok(cli(node, "status", env=env, where=False)).startswith(
        f"node https://localhost:{node.port}  version ")
    json.loads(ok(cli(node, "models", "--json", env=env, where=False)))


def test_failures_are_one_line_and_an_exit_status(node, tmp_path):
    nowhere = ["--node", f"http://127.0.0.1:{free_port()}", "--grpc", f"127.0.0.1:{free_port()}"]
    for command in (["status"], ["models"], ["infer", "/tmp/x.png"]):
        done = cli(node, *command, *nowhere, where=False)
        assert "cannot reach" in one_error_line(done, 3)
        assert "Traceback" not in done.stderr

    for command in (["models"], ["status"], ["infer", "/tmp/x.png"]):
        done = cli(node, *command, env={"AISRV_TOKEN": "wrong"})
        assert "token" in one_error_line(done, 1)

    # A node whose certificate is not trusted is not the node asked for: not reached.
    untrusted = ["--node", node.base, "--grpc", f"127.0.0.1:{node.grpc_port}"]
    for command in (["models"], ["status"]):
        done = cli(node, *command, *untrusted, where=False)
        assert "cannot reach" in one_error_line(done, 3)

    assert "no model 'ghost'" in one_error_line(cli(node, "load", "ghost"), 1)
    assert "is not a bundle folder" in one_error_line(cli(node, "push", str(tmp_path)), 2)

    bundle = write_bundle(tmp_path / "vendor", name="gamma", labels=["a", "b"], seed=7)
    ok(cli(node, "push", str(bundle.path)))
    assert "already exists" in one_error_line(cli(node, "push", str(bundle.path)), 1)

    usage = cli(node, "load")
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_many_images_show_a_progress_bar_on_a_terminal(node, tmp_path):
    bundle = write_bundle(tmp_path / "vendor", name="delta", labels=["x", "y"], seed=11)
    ok(cli(node, "push", str(bundle.path)))
    bid = ok(cli(node, "load", "delta")).split()[-1]
    images = [str(write_image(node.storage / "input" / f"delta{i}.png", seed=i)) for i in range(4)]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, str(RUN_PY), "infer", *images, "--bid", bid, "--node", node.base,
             "--cacert", str(node.cert), "--json"], env=_env({"TERM": "xterm", "COLUMNS": "100"}), stdout=subprocess.PIPE,
            stderr=follower, text=True, timeout=180, cwd=str(RUN_PY.parent))
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert len(json.loads(done.stdout)) == 4  # the bar goes to the terminal, not the JSON
    assert b"infer" in shown and b"4/4" in shown
    ok(cli(node, "unload", bid))


def test_nodes_lists_the_fleet_this_node_is_in(node):
    fleet = json.loads(ok(cli(node, "nodes", "--json")))
    port = node.base.rsplit(":", 1)[1]
    (me,) = [n for n in fleet if n["addresses"]["rest"].endswith(f":{port}")]
    assert me["addresses"]["rest"].startswith("https://")  # the node speaks TLS
    assert me["addresses"]["grpc"].endswith(f":{node.grpc_port}")
    assert me["version"] and "cpu" in me["resources"]
    table = ok(cli(node, "nodes"))
    row = next(line.split() for line in table.splitlines() if line.startswith(me["name"]))
    assert row[1] == me["version"] and row[2] == me["addresses"]["rest"]
