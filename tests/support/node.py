"""A node started the way users start it (`python run.py`), as a subprocess on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[2]
# CI points this at release-pack/run.py to run the same tests against the compiled pack.
RUN_PY = Path(os.environ.get("AISRV_TEST_RUN_PY", ROOT / "run.py")).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeProcess:
    def __init__(self, storage: Path, *, args=(), env: dict | None = None, run_py: Path = RUN_PY):
        self.run_py = Path(run_py)
        self.storage = Path(storage)
        self.port = free_port()
        self.args = list(args)
        self.env = dict(os.environ)
        self.env.pop("AISRV_SETTINGS", None)
        self.redis_port = free_port()
        self.grpc_port = free_port()
        self.oip_grpc_port = free_port()  # Open Inference Protocol gRPC
        self.env.update({"AISRV_STORAGE": str(self.storage), "AISRV_NODE_NAME": f"test{self.port}",
                         "AISRV_REQUEST_TIMEOUT_S": "60", "AISRV_REDIS_PORT": str(self.redis_port),
                         "AISRV_GRPC_ADDRESS": f"127.0.0.1:{self.grpc_port}",
                         "AISRV_OIP_GRPC_ADDRESS": f"127.0.0.1:{self.oip_grpc_port}",
                         # Fixed sizes for tests of the node's mechanics (batches forming,
                         # one process to kill); tests/e2e/test_sizing.py checks the
                         # automatic ones.
                         "AISRV_BACKEND_INFERPROCNUM": "1", "AISRV_BATCH_AUTOTUNE": "false"})
        self.env.update(env or {})
        for name, value in list(self.env.items()):
            if value is None:  # a test asking for the product's default
                del self.env[name]
        # With TLS on, the front speaks only HTTPS: verify it against the node's own cert.
        self.tls_cert = self.env.get("AISRV_TLS_CERT") or None
        self.log_path = self.storage.parent / f"node-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self):
        return self.tls_cert or True

    def start(self, timeout: float = 90) -> "NodeProcess":
        self.storage.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.run_py), "--port", str(self.port), *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=str(self.run_py.parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base + "/healthz", timeout=1,
                                verify=self.verify).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"node did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return requests.post(self.base + path, json=body, timeout=kwargs.pop("timeout", 90), **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return requests.get(self.base + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def switch(self, **body) -> str:
        response = self.post("/api/v1alpha/switch", body)
        assert response.status_code == 200, response.text
        return response.json()["bid"]

    def wait_switch(self, bid: str | None = None, until=("loaded",), timeout: float = 90) -> list[dict]:
        """Poll GET /switch until its status is one of `until`; returns every answer seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.get("/api/v1alpha/switch", params={"bid": bid} if bid else None).json()
            seen.append(answer)
            if answer.get("status") in until:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"switch never reached {until}: last {seen[-1]}\n{self.log()}")

    def detect(self, path, **extra) -> requests.Response:
        return self.post("/api/v1alpha/detect", {"path": str(path), **extra})

    def worker_pids(self) -> list[int]:
        """PIDs of the inference processes (spawned children of the node)."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    def redis_pid(self) -> int:
        """PID of the embedded redis-server (a killed one not yet reaped is skipped)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "redis-server" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                pass
        raise AssertionError("no embedded redis-server under the node")

    def all_pids(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"node did not stop within {timeout} s:\n{self.log()}")
