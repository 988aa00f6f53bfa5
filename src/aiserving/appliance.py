"""One node on one box: redis, the node daemon (with the gRPC API), its workers, the REST front.

Started in that order and stopped in reverse: the fronts first (no new
requests), then the workers (each drains what was queued), then redis.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import redis

# The node starts processes (the REST front, the embedded redis) with fork+exec while
# gRPC's threads run; gRPC's fork handlers then race those threads in the child and
# can abort it. Nothing forked here uses gRPC, so they are turned off (read by grpc
# at import, which happens after this).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import aiserving  # noqa: E402
from aiserving import metrics
from aiserving.api.tls import TlsFiles, load_tls
from aiserving.broker import broker as brk
from aiserving.broker.embedded import EmbeddedRedis
from aiserving.config import Settings
from aiserving.config.redis_url import redact
from aiserving.errors import AiservingError, ConfigError
from aiserving.node.daemon import Node
from aiserving.procutil import die_with_parent, stop_process

log = logging.getLogger(__name__)


class Appliance:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.node: Node | None = None
        self.grpc = None
        self.oip_grpc = None  # Open Inference Protocol gRPC (oip.grpc_address)
        self.front: subprocess.Popen | None = None
        self.tls: TlsFiles | None = None
        self._stop = threading.Event()

    def run(self, on_ready=None) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop everything. Returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start()
            if on_ready:
                on_ready(self)
            while not self._stop.wait(0.5):
                if self.front.poll() is not None:
                    log.error("the REST front exited (code %s); stopping the node",
                              self.front.returncode)
                    return 1
                self._keep_redis()
                down = self.node.outage.down_for()
                if down > self.settings["redis.recover_s"]:
                    log.error("redis has not answered for %.0f s (redis.recover_s): exiting so "
                              "the box's supervisor restarts the node", down)
                    return 3
            log.info("stopping")
            return 0
        except ConfigError as exc:
            log.error("%s", exc.message)
            return 2
        finally:
            self.stop()

    def start(self) -> None:
        s = self.settings
        s.storage.mkdir(parents=True, exist_ok=True)
        _check_port_free(s["http.host"], s["http.port"])
        url = s.redis_url
        self.tls = load_tls(s)  # before anything starts: a bad file is one clear line
        _check_doors(s)
        # Before any process of the node records a metric (they all inherit it).
        metrics.enable(s.storage / "run" / "metrics")
        if url is None:
            self.redis = EmbeddedRedis(s.storage / "run", s["redis.bind"], int(s["redis.port"]),
                                       s["redis.password"], s["redis.durability"]).start()
            url = self.redis.url
        try:
            persistence = brk.connect(url, socket_connect_timeout=3,
                                      socket_timeout=5).info("persistence")
        except (redis.RedisError, OSError) as exc:
            raise ConfigError(f"Cannot reach redis at {redact(url)} ({exc}): check redis.url "
                              "(or redis.host and redis.port, or redis.sentinels), or leave them "
                              "empty for the embedded one.") from None
        if self.redis is None:
            log.info("redis: %s, key prefix %r", redact(url), s["redis.key_prefix"])
            if not int(persistence.get("aof_enabled", 0)):
                log.warning("redis at %s keeps no append-only file (INFO persistence: "
                            "aof_enabled:0): a restart of it loses every queued job and stored "
                            "result; set `appendonly yes` there", redact(url))
        self.node = Node(s, url)
        self.node.start()
        from aiserving.api.grpc.server import GrpcServer  # fails fast if protos are not generated

        self.grpc = GrpcServer(self.node, self.tls).start()
        if s["oip.grpc_address"]:
            from aiserving.api.grpc.oip_service import OipGrpcServer

            self.oip_grpc = OipGrpcServer(self.node, self.tls).start()
        self._autoload(self.node.restore())
        self._start_front(url)

    def _keep_redis(self) -> None:
        """Restart the embedded redis if it exited; the node republishes its state and
        the workers recreate their stream groups by themselves."""
        if self.redis is None or self.redis.process is None or self.redis.process.poll() is None:
            return
        log.error("the embedded redis exited (code %s); restarting it",
                  self.redis.process.returncode)
        try:
            self.redis.start()
        except ConfigError as exc:
            log.error("cannot restart the embedded redis: %s", exc.message)

    def _autoload(self, restored: set[str]) -> None:
        """`autoload` models not already brought back with the backends of the last run."""
        for ref in self.settings["autoload"]:
            try:
                bundle = self.node.store.resolve(ref)
                if bundle.fullhash in restored:
                    continue
                bid = self.node.switch(btype=bundle.record.backend_type, model=bundle.fullhash)
            except AiservingError as exc:
                raise ConfigError(f"Setting 'autoload' names {ref!r}, which cannot be loaded: "
                                  f"{exc.message}") from None
            log.info("autoload: backend %s loads %s (%s)", bid, bundle.fullhash, bundle.record.name)

    def _start_front(self, redis_url: str) -> None:
        s = self.settings
        values = s.as_dict()
        values["redis.url"] = redis_url
        package_root = str(Path(aiserving.__file__).resolve().parent.parent)
        env = dict(os.environ, AISRV_RESOLVED_SETTINGS=json.dumps(values),
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        debug = s["log.level"] == "DEBUG"
        cmd = [sys.executable, "-m", "gunicorn",
               "--bind", f"{s['http.host']}:{s['http.port']}",
               "--workers", str(s["http.workers"] or max(1, (os.cpu_count() or 2) // 2)),
               "--worker-class", "aiserving.api.rest.gunicorn.GuardedGeventWorker",
               "--worker-connections", str(s["http.connections"]), "--keep-alive", "2",
               "--timeout", str(int(s["request.timeout_s"]) + 30),
               "--graceful-timeout", str(int(s.grace_s + 0.999)),
               "--log-level", "debug" if debug else "warning"]
        if debug:
            cmd += ["--access-logfile", "-"]
        if self.tls is not None:
            cmd += ["--certfile", self.tls.cert_path, "--keyfile", self.tls.key_path]
        cmd.append("aiserving.api.rest.app:create_app()")
        self.front = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                      start_new_session=True, preexec_fn=die_with_parent)
        url = s.local_rest_url + "/healthz"
        scheme = "http" if self.tls is None else "https"
        probe = None
        if self.tls is not None:
            # Our own front on this box, asked only whether it answers: the certificate
            # may name the device, not this address, so it is not verified here.
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.front.poll() is not None:
                raise ConfigError(f"The REST front (gunicorn) exited at start with code "
                                  f"{self.front.returncode}; see the log above.")
            try:
                with urllib.request.urlopen(url, timeout=1, context=probe) as response:
                    if response.status == 200:
                        door = "plain text, no TLS (set tls.cert and tls.key for HTTPS)" \
                            if self.tls is None else f"HTTPS, certificate {self.tls.cert_path}"
                        log.info("REST front listening on %s://%s:%s: %s (pid %d)", scheme,
                                 s["http.host"], s["http.port"], door, self.front.pid)
                        return
            except OSError:
                time.sleep(0.1)
        raise ConfigError(f"The REST front did not answer on {url} within 30 s.")

    def stop(self) -> None:
        """Stop taking requests, answer what was taken, then stop.

        The REST front stops accepting and finishes its requests (gunicorn's
        graceful timeout is the grace period) while the workers still serve them;
        the gRPC server likewise; then the workers drain what is still queued.
        """
        grace = self.settings.grace_s
        for server in (self.grpc, self.oip_grpc):
            if server is not None:
                server.server.stop(grace)  # no new calls from here on; running ones go on
        stop_process(self.front, grace + 10, children_too=True)
        if self.grpc is not None:
            self.grpc.stop(grace)
            self.grpc = None
        if self.oip_grpc is not None:
            self.oip_grpc.stop(grace)
            self.oip_grpc = None
        if self.node is not None:
            self.node.stop(drain_s=grace)
            self.node = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _check_doors(s: Settings) -> None:
    """Closed by default: say at start which doors are open beyond loopback."""
    embedded_tcp = s.redis_url is None and s["redis.port"] != "0"
    if embedded_tcp and not is_loopback(s["redis.bind"]) and not s["redis.password"]:
        raise ConfigError(f"Setting 'redis.bind' is {s['redis.bind']!r}, beyond loopback, but "
                          "'redis.password' is empty: set a password, or keep redis on 127.0.0.1.")
    doors = []
    if not s["auth.token"]:  # an admin token alone leaves inference open
        doors += [("REST", "http.host", s["http.host"]),
                  ("gRPC", "grpc.address", s["grpc.address"].rpartition(":")[0])]
        if s["oip.grpc_address"]:
            doors.append(("Open Inference Protocol gRPC", "oip.grpc_address",
                          s["oip.grpc_address"].rpartition(":")[0]))
    if embedded_tcp:
        doors.append(("redis", "redis.bind", s["redis.bind"]))
    if s["auth.admin_addresses"]:
        log.info("management calls are accepted only from %s (auth.admin_addresses)",
                 ", ".join(s["auth.admin_addresses"]))
    for door, key, host in doors:
        if not is_loopback(host):
            log.warning("%s listens on %s (%s), beyond loopback, without authentication: "
                        "anyone who reaches this address can use it", door, host or "*", key)


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(f"Setting 'http.port' is {port}, but {host}:{port} cannot be "
                              f"bound ({exc.strerror}): use --port or AISRV_HTTP_PORT.") from None
