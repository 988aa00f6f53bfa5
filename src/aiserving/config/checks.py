"""A setting's description and the value checks the area tables use.

A check returns a complaint ending a sentence that names the setting, or None.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, NamedTuple


class Setting(NamedTuple):
    key: str
    default: Any
    kind: str  # str | int | float | bool | list
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None


def port(v):
    return None if 0 <= v <= 65535 else "must be a TCP port between 0 and 65535"


def positive(v):
    return None if v > 0 else "must be greater than 0"


def non_negative(v):
    return None if v >= 0 else "must not be negative"


def one_of(*choices):
    def check(v):
        return None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)
    return check


def torch_device(v):
    return None if re.fullmatch(r"cpu|cuda(:\d+)?", v) else "must be 'cpu', 'cuda' or 'cuda:N'"


def networks(v):
    try:
        for item in v:
            ipaddress.ip_network(item.strip(), strict=False)
    except ValueError as exc:
        return f"must list IP addresses or CIDR networks (e.g. 127.0.0.1,10.0.0.0/8): {exc}"
    return None


def redis_url(v):
    if not v:
        return None
    from aiserving.config.redis_url import parse

    try:
        parse(v)
    except ValueError as exc:
        return str(exc)
    return None


def host_ports(v):
    for item in v:
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"must list host:port addresses (e.g. 10.0.0.5:26379,10.0.0.6:26379), not {item!r}"
    return None


def log_level(v):
    return one_of("DEBUG", "INFO", "WARNING", "ERROR")(v.upper())
