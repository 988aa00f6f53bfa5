"""Where the node's redis is: one URL string, read and written here only.

The string travels as it is to every process of the node (the REST front gets
it in its settings, the inference processes in their spec), so every form an
operator may need is a URL:

- `unix:///path/redis.sock[?password=...]`: the embedded redis.
- `redis://[[user]:password@]host:port[/db]`: plain TCP, an ACL user or a password.
- `rediss://...`: the same over TLS (`?ssl_ca_certs=/ca.pem` for a private CA;
  `ssl_certfile`/`ssl_keyfile` for a client certificate).
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`: the
  primary of `service` as Redis Sentinel names it, asked of those sentinels again
  whenever a connection is made, so a failover is followed by the next reconnect.
  `?sentinel_password=...` (and `sentinel_username`) when the sentinels ask for
  one; `rediss+sentinel://` speaks TLS to the sentinels and to the data nodes.

The db number (path, or `?db=`) is where the node's own keys live (jobs, state);
results for legacy clients stay in db 5 whatever it is (`broker.connection.connect(url, 5)`).
Connecting is `broker.connection`'s; this module only reads and composes the text, so
settings can check a URL without the broker.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import redis
from redis.connection import UnixDomainSocketConnection, parse_url

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix") + SENTINEL_SCHEMES

_SENTINEL_ONLY = ("sentinel_password", "sentinel_username")


class BadUrl(ValueError):
    """What is wrong with a URL, as the end of a sentence naming its setting."""


class Target(NamedTuple):
    scheme: str
    sentinels: list[tuple[str, int]]  # empty unless a Sentinel URL
    service: str
    db: int
    options: dict  # connection keyword arguments of the data node (redis-py's)
    sentinel_options: dict


def parse(url: str) -> Target:
    """The parts of a redis URL; BadUrl says what is wrong with it."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES or "://" not in url:
        raise BadUrl("must be a URL starting with " + ", ".join(f"{s}://" for s in SCHEMES))
    try:
        if scheme in SENTINEL_SCHEMES:
            return _parse_sentinel(url, scheme)
        options = parse_url(url)
    except BadUrl:
        raise
    except ValueError as exc:  # redis-py's or urllib's words
        raise BadUrl(f"cannot be read as a redis URL ({str(exc).rstrip('.')})") from None
    db = int(options.pop("db", 0) or 0)
    if options.get("connection_class") is not UnixDomainSocketConnection and not options.get("host"):
        raise BadUrl("names no host")
    _check_options(options)
    return Target(scheme, [], "", _db(db), options, {})


def _parse_sentinel(url: str, scheme: str) -> Target:
    parts = urlsplit(url)
    auth, _, hostlist = parts.netloc.rpartition("@")
    sentinels = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadUrl(f"must list sentinels as host:port[,host:port...], not {item!r}")
        sentinels.append((host, int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or len(path) == 2 and not path[1].isdigit():
        raise BadUrl("must name the Sentinel service and optionally a db: "
                         "redis+sentinel://host:port,host:port/service[/db]")
    query = dict(parse_qsl(parts.query))
    sentinel_options = {k.replace("sentinel_", ""): query.pop(k) for k in _SENTINEL_ONLY
                        if k in query}
    # The data node's options as redis-py reads them from a URL of its own.
    tls = scheme.startswith("rediss")
    options = parse_url(f"{'rediss' if tls else 'redis'}://sentinel/{path[1] if len(path) > 1 else 0}"
                        f"?{urlencode(query)}")
    options.pop("host", None)
    db = int(options.pop("db", 0) or 0)
    user, _, password = auth.partition(":")
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)
    _check_options(options)
    options.pop("connection_class", None)
    if tls:
        options["ssl"] = True  # SentinelConnectionPool picks its TLS connection class by it
        sentinel_options.update({k: v for k, v in options.items() if k.startswith("ssl")})
    return Target(scheme, sentinels, path[0], _db(db), options, sentinel_options)


def _db(db: int) -> int:
    if not 0 <= db < 10_000:
        raise BadUrl(f"names db {db}, which is not a redis database number")
    return db


def _check_options(options: dict) -> None:
    """Unknown query parameters would fail only at the first connection: say so now."""
    cls = options.get("connection_class") or redis.Connection
    try:
        cls(**{k: v for k, v in options.items() if k != "connection_class"})
    except TypeError as exc:
        raise BadUrl(f"has a parameter redis does not know ({exc})") from None


def home_db(url: str) -> int:
    """The db number the node's own keys live in."""
    return parse(url).db


def with_defaults(url: str, password: str = "", ca_file: str = "") -> str:
    """`url` with a password and a TLS CA file it does not name itself (separate
    settings, so a secret need not be written into the URL)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    names = {k for k, _ in query}
    # redis-py decodes query values twice (parse_qs, then unquote): quoted once more here.
    if password and "password" not in names and not parts.password:
        query.append(("password", quote(password, safe="")))
    if ca_file and parts.scheme.startswith("rediss") and "ssl_ca_certs" not in names:
        query.append(("ssl_ca_certs", quote(ca_file, safe="/")))
    return _join(parts.scheme, parts.netloc, parts.path, query)


def _join(scheme: str, netloc: str, path: str, query: list) -> str:
    # Not urlunsplit: it writes `unix:/path` for `unix:///path`, which redis-py refuses.
    return f"{scheme}://{netloc}{path}" + (f"?{urlencode(query, safe='/*')}" if query else "")


def sentinel_url(sentinels: list[str], service: str) -> str:
    """The URL of settings `redis.sentinels` and `redis.sentinel_service`."""
    return f"redis+sentinel://{','.join(s.strip() for s in sentinels)}/{quote(service, safe='')}"


def redact(url: str) -> str:
    """`url` fit for a log line: passwords replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    auth, at, hosts = netloc.rpartition("@")
    if at and ":" in auth:
        netloc = f"{auth.partition(':')[0]}:***@{hosts}"
    query = [(k, "***" if "password" in k else v) for k, v in parse_qsl(parts.query)]
    return _join(parts.scheme, netloc, parts.path, query)
