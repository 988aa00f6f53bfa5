"""Reading settings: built-in defaults < settings.py < environment (AISRV_*).

`settings.py` is the legacy format: a Python file defining a dict named
`settings`. Every key can be overridden by an environment variable named
`AISRV_` + the key upper-cased with dots as underscores (`redis.host` ->
`AISRV_REDIS_HOST`). A value that cannot be used stops the start with one
sentence naming the setting (`ConfigError`).
"""

from __future__ import annotations

import json
import os
import runpy
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiserving.config import box, doors, frameworks, limits, redis, serving
from aiserving.config.checks import Setting
from aiserving.errors import ConfigError



#: the areas in the order the reference shows them; one table of every setting
AREAS = (box, redis, frameworks, doors, limits, serving)
SETTINGS: tuple[Setting, ...] = tuple(s for area in AREAS for s in area.SETTINGS)
_BY_KEY = {s.key: s for s in SETTINGS}
# The old product's settings.py key `port` is its gRPC bind address ("[::]:50051").
_ALIASES = {"port": "grpc.address"}  # legacy settings.py key -> key
_ENV_ALIASES = {"AISRV_PORT": "grpc.address"}  # legacy spelling; the key's own variable wins


def env_name(key: str) -> str:
    return "AISRV_" + key.upper().replace(".", "_")


def _convert(setting: Setting, raw: Any) -> Any:
    kind = setting.kind
    if kind == "str":
        return str(raw)
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError
        return int(str(raw).strip())
    if kind == "float":
        return float(str(raw).strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError
    if kind == "list":
        if isinstance(raw, (list, tuple)):
            return [str(x) for x in raw]
        text = str(raw).strip()
        if text.startswith("["):
            return [str(x) for x in json.loads(text)]
        return [part.strip() for part in text.split(",") if part.strip()]
    raise AssertionError(kind)


class Settings:
    """Validated settings of one node. Read values with `settings["redis.host"]`."""

    def __init__(self, values: dict[str, Any], source: Path | None = None):
        self._values = values
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def storage(self) -> Path:
        return Path(self._values["storage"])

    @property
    def grace_s(self) -> float:
        """The effective shutdown grace period (see `shutdown.grace_s`)."""
        timeout = float(self._values["request.timeout_s"])
        return max(float(self._values["shutdown.grace_s"]) or timeout + 5.0, timeout)

    @property
    def local_rest_url(self) -> str:
        """The REST door as a client on this box reaches it: a wildcard bind address is
        asked on loopback; https where the node has a certificate."""
        host = self._values["http.host"]
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self._values["tls.cert"] else "http"
        return f"{scheme}://{host}:{self._values['http.port']}"

    @property
    def redis_url(self) -> str | None:
        """The configured external redis as one URL (`config.redis_url`), or None for the
        embedded one."""
        from aiserving.config.redis_url import sentinel_url, with_defaults

        v = self._values
        url = v.get("redis.url") or ""
        if not url and v.get("redis.sentinels"):
            url = sentinel_url(v["redis.sentinels"], v.get("redis.sentinel_service") or "mymaster")
        elif not url and v["redis.host"]:
            auth = f":{quote(v['redis.password'], safe='')}@" if v["redis.password"] else ""
            url = f"redis://{auth}{v['redis.host']}:{v['redis.port']}"
        if not url:
            return None
        return with_defaults(url, v["redis.password"], v.get("redis.tls_ca") or "")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None,
             environ: dict | None = None) -> "Settings":
        """Defaults, then the settings file, then AISRV_* variables, then `overrides`.

        `path` None: `AISRV_SETTINGS`, else no file (defaults and environment only).
        """
        environ = os.environ if environ is None else environ
        path = path or environ.get("AISRV_SETTINGS") or None
        raw: dict[str, tuple[Any, str]] = {}
        base = Path.cwd()
        if path:
            path = Path(path).resolve()
            base = path.parent
            for name, value in _read_file(path).items():
                key = _ALIASES.get(name, name)
                if key not in _BY_KEY:
                    raise ConfigError(f"{path} has unknown setting '{key}'.")
                raw[key] = (value, f"'{name}' in {path.name}")
        for name, key in _ENV_ALIASES.items():
            if name in environ:
                raw[key] = (environ[name], name)
        for setting in SETTINGS:
            name = env_name(setting.key)
            if name in environ:
                raw[setting.key] = (environ[name], name)
        for key, value in (overrides or {}).items():
            raw[key] = (value, f"'{key}'")

        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value, where = raw.get(setting.key, (setting.default, f"default of '{setting.key}'"))
            try:
                value = _convert(setting, value)
                if setting.key == "grpc.address" and value.strip().isdigit():
                    value = f"[::]:{value.strip()}"  # a bare port, as some old files have it
            except (ValueError, TypeError, json.JSONDecodeError):
                raise ConfigError(f"Setting {where} is {value!r}, which is not a valid {setting.kind}.") from None
            complaint = setting.check(value) if setting.check else None
            if complaint:
                if setting.key == "redis.url":  # a password must not reach the log
                    from aiserving.config.redis_url import redact

                    value = redact(value)
                raise ConfigError(f"Setting {where} is {value!r}: it {complaint}.")
            values[setting.key] = value
        values["log.level"] = values["log.level"].upper()
        values["storage"] = str((base / values["storage"]).resolve())
        for key in ("preheat", "tls.cert", "tls.key", "tls.client_ca", "redis.tls_ca"):
            if values[key]:
                values[key] = str((base / values[key]).resolve())
        values["crypto.device_key"] = str((base / values["crypto.device_key"]).resolve()) \
            if values["crypto.device_key"] else str(Path(values["storage"]) / "keys" /
                                                    "device-key.pem")
        values["fleet.shared_inputs"] = [str((base / r).resolve())
                                         for r in values["fleet.shared_inputs"]]
        values["input.roots"] = [str((base / r).resolve()) for r in values["input.roots"]] or [
            str(Path(values["storage"]) / "input"), str(Path(values["storage"]) / "demo"),
            str(Path(tempfile.gettempdir()).resolve())]
        return cls(values, path)


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"Settings file {path} does not exist.")
    try:
        module = runpy.run_path(str(path))
    except Exception as exc:  # the file is user code: any failure is a config error
        raise ConfigError(f"Settings file {path} cannot be read: {type(exc).__name__}: {exc}.") from None
    data = module.get("settings", module.get("SETTINGS"))
    if not isinstance(data, dict):
        raise ConfigError(f"Settings file {path} must define a dict named 'settings'.")
    return data
