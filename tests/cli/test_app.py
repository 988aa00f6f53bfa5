"""`python run.py`: fail fast at start, stop everything on a signal, the demo works."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.node import RUN_PY, NodeProcess, free_port


def run_py(*args, env=None, timeout=60):
    full_env = dict(os.environ, AISRV_REDIS_PORT="0", AISRV_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
                    AISRV_OIP_GRPC_ADDRESS=f"127.0.0.1:{free_port()}")
    full_env.update(env or {})
    full_env.pop("AISRV_SETTINGS", None)
    return subprocess.run([sys.executable, str(RUN_PY), *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(RUN_PY.parent))


def test_a_bad_setting_stops_the_start_with_one_sentence(storage):
    done = run_py("--port", str(free_port()),
                  env={"AISRV_STORAGE": str(storage), "AISRV_BATCH_SIZE": "lots"})
    assert done.returncode == 2
    assert "AISRV_BATCH_SIZE" in done.stderr and "'lots'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_busy_port_is_named(storage):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = run_py("--port", str(port), env={"AISRV_STORAGE": str(storage)})
    assert done.returncode == 2
    assert f"127.0.0.1:{port} cannot be bound" in done.stderr


@pytest.mark.parametrize("setting", ["AISRV_GRPC_ADDRESS", "AISRV_REDIS_PORT"])
def test_busy_grpc_and_redis_ports_are_named(storage, setting):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        value = f"127.0.0.1:{port}" if setting == "AISRV_GRPC_ADDRESS" else str(port)
        done = run_py("--port", str(free_port()), env={"AISRV_STORAGE": str(storage), setting: value})
    assert done.returncode == 2
    assert setting in done.stderr and "Traceback" not in done.stderr
    assert not (storage / "run" / "redis.sock").exists()  # what started was stopped again


def test_unreachable_external_redis_is_named(storage):
    done = run_py("--port", str(free_port()), env={
        "AISRV_STORAGE": str(storage), "AISRV_REDIS_HOST": "127.0.0.1",
        "AISRV_REDIS_PORT": str(free_port())})
    assert done.returncode == 2
    assert "Cannot reach redis" in done.stderr and "Traceback" not in done.stderr


def test_an_autoload_model_that_is_missing_stops_the_start(storage):
    done = run_py("--port", str(free_port()),
                  env={"AISRV_STORAGE": str(storage), "AISRV_AUTOLOAD": "ghost"})
    assert done.returncode == 2
    assert "'autoload'" in done.stderr and "ghost" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything_the_node_started(storage, sig):
    from tests.support.bundles import write_bundle

    write_bundle(storage, name="tiny")
    node = NodeProcess(storage, env={"AISRV_AUTOLOAD": "tiny"}).start()
    node.wait_switch()
    children = [psutil.Process(pid) for pid in node.all_pids()]

    def command(child) -> str:
        try:
            return " ".join(child.cmdline())
        except psutil.Error:  # a framework probe that just ended, not reaped yet
            return ""

    names = " ".join(command(c) for c in children)
    assert "redis-server" in names and "gunicorn" in names and "spawn_main" in names
    node.proc.send_signal(sig)
    assert node.proc.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert not (storage / "run" / "redis.sock").exists()


def test_the_health_command_asks_the_port_the_settings_name(storage, tmp_path):
    """`run.py health` (the images' HEALTHCHECK) follows AISRV_HTTP_PORT and settings.py."""
    node = NodeProcess(storage).start()
    try:
        done = run_py("health", env={"AISRV_HTTP_PORT": str(node.port)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"healthy: http://127.0.0.1:{node.port}/healthz"
        settings = tmp_path / "box.py"
        settings.write_text(f"settings = {{'http.host': '0.0.0.0', 'http.port': {node.port}}}\n")
        done = run_py("health", "--settings", str(settings))
        assert done.returncode == 0, done.stderr
        idle = free_port()
        done = run_py("health", "--timeout", "2", env={"AISRV_HTTP_PORT": str(idle)})
        assert done.returncode == 1
        assert f"unhealthy: http://127.0.0.1:{idle}/healthz" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        node.stop()


def test_the_demo_command_serves_the_demo_model(tmp_path):
    node = NodeProcess(tmp_path / "storage", args=["--demo"]).start(timeout=180)
    try:
        deadline = time.monotonic() + 120
        while "The demo model is loaded" not in node.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = node.log()
        assert "curl -s -X POST" in log
        body = json.loads(log.split("-d '", 1)[1].split("'", 1)[0])
        answer = node.detect(body["path"]).json()
        assert answer["status"] == "success"
        assert answer["result"]["label"] == "circle"
        for shape in ("square", "triangle"):
            result = node.detect(tmp_path / "storage" / "demo" / f"{shape}.jpg").json()["result"]
            assert result["label"] == shape
    finally:
        node.stop()


def test_installing_the_package_gives_the_aiserving_command(tmp_path):
    root = RUN_PY.parent if (RUN_PY.parent / "setup.py").exists() else Path(__file__).resolve().parents[2]
    prefix = tmp_path / "prefix"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--prefix", str(prefix), str(root)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (site,) = prefix.glob("lib/python*/site-packages")
    env = dict(os.environ, PYTHONPATH=str(site))
    exe = prefix / "bin" / "aiserving"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and "AIServing OnBoard" in version.stdout
    serve = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, env=env)
    for option in ("--port", "--debug", "--profile", "--demo"):
        assert option in serve.stdout
    assert "--profile" in run_py("--help").stdout  # run.py is the same command line
