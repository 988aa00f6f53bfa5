"""Real redis servers for tests: Debian's redis-server 7 (TLS, ACL users, Sentinel), each
started on a free port and stopped by its PID."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.node import free_port

REDIS_SERVER = Path(os.environ.get("AISRV_TEST_REDIS_SERVER", "/usr/bin/redis-server"))


def require_redis_server() -> Path:
    assert REDIS_SERVER.exists(), (f"{REDIS_SERVER} is missing: scripts/setup.sh installs "
                                   "Debian's redis-server package for the tests "
                                   "(apt-get install redis-server)")
    return REDIS_SERVER


class RedisServer:
    """One redis-server (or sentinel) process; `lines`: its configuration file's lines
    (`port` added unless they set one: `port 0` with `tls-port` for TLS only)."""

    def __init__(self, folder: Path, name: str, lines: list[str], port: int | None = None,
                 sentinel: bool = False):
        self.folder = Path(folder) / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.name = name
        conf = self.folder / "redis.conf"
        if not any(line.startswith("port ") for line in lines):
            lines = [f"port {self.port}", *lines]
        conf.write_text("\n".join([f"dir {self.folder}", 'save ""', "appendonly no",
                                   f"logfile {self.folder / 'redis.log'}", *lines]) + "\n")
        cmd = [str(require_redis_server()), str(conf)] + (["--sentinel"] if sentinel else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, client: redis.Redis, timeout: float = 15) -> "RedisServer":
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client.ping()
                return self
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer:\n{self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def write_tls_files(folder: Path) -> dict[str, Path]:
    """A private CA and a server certificate it signed, for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aisrv test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "redis.pem", "key": folder / "redis.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths
