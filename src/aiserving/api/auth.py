"""Who may call the node: bearer tokens, checked the same way at both doors.

With `auth.token` set, every REST call but `/healthz` (and the static files of the
console page, which hold no data) needs `Authorization: Bearer <token>`, and every
gRPC call the same as `authorization` metadata. With `auth.admin_token` set too,
management calls (loading and unloading models, creating, changing, deleting,
importing and exporting stored models, uploads and downloads) need the admin
token; it also passes wherever the plain token does. An admin token alone guards
management calls only; inference stays open.
Tokens are compared in constant time. Without tokens (the default, what fleets
in the field speak) nothing is asked: the doors stay on loopback unless opened.

With `auth.admin_addresses` set, management calls are also accepted only from a
peer inside one of its networks (403 / PERMISSION_DENIED otherwise). The peer is
the connection's own address: the REST front has no proxy in front of it, so a
client-sent `X-Forwarded-For` is never believed. A unix-socket peer is on this
box and counts as loopback.

A peer that keeps failing authentication (`auth.max_failures` a minute) is refused
outright until its minute is over, so tokens cannot be guessed at the doors' speed;
every failure is logged with the peer.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from urllib.parse import unquote

from aiserving.errors import AiservingError

#: gRPC methods that change what the node runs or stores (need the admin token)
ADMIN_RPCS = frozenset({
    "/trueno.Backend/InitializeBackend", "/trueno.Backend/ReloadModelOnBackend",
    "/trueno.Backend/TerminateBackend", "/trueno.Backend/CreateAndLoadModel",
    "/trueno.Backend/CreateAndLoadModelV2",
    "/trueno.Model/CreateModel", "/trueno.Model/DistroConfig", "/trueno.Model/DeleteModel",
    "/trueno.Model/ExportModelImage", "/trueno.Model/ImportModelDistro",
    "/trueno.Model/ImportModelDistroV2",
    "/trueno.Exchange/UploadBin", "/trueno.Exchange/DownloadBin",
})


class Unauthenticated(AiservingError):
    code = 1
    http_status = 401


class Forbidden(AiservingError):
    code = 1
    http_status = 403


class TooManyFailures(AiservingError):
    code = 1
    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


log = logging.getLogger(__name__)
_WINDOW_S = 60.0


_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class Guard:
    def __init__(self, token: str, admin_token: str, admin_addresses=(), max_failures: int = 0):
        self.token = token.encode()
        self.admin = admin_token.encode()
        self.networks = tuple(ipaddress.ip_network(a.strip(), strict=False)
                              for a in admin_addresses)
        self.max_failures = max_failures
        self._failures: dict[str, list[float]] = {}  # peer address -> failure times
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "Guard":
        return cls(settings["auth.token"], settings["auth.admin_token"],
                   settings["auth.admin_addresses"], settings["auth.max_failures"])

    def check_peer(self, peer: str | None) -> None:
        """Raise TooManyFailures while `peer` is over its failures of the last minute."""
        if not self.max_failures:
            return
        key = str(peer_address(peer) or peer or "")
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._failures.get(key, ()) if now - t < _WINDOW_S]
            if times:
                self._failures[key] = times
            else:
                self._failures.pop(key, None)
        if len(times) >= self.max_failures:
            wait = int(_WINDOW_S - (now - times[0])) + 1
            raise TooManyFailures(f"too many failed authentications from this address "
                                  f"(auth.max_failures: {self.max_failures} a minute); "
                                  f"retry in {wait} s", wait)

    def failed(self, peer: str | None, what: str) -> None:
        """Count and log a failed authentication of `peer`."""
        key = str(peer_address(peer) or peer or "")
        log.warning("authentication failed from %s: %s", key or "an unknown peer", what)
        if not self.max_failures:
            return
        with self._lock:
            if len(self._failures) > 10_000:  # a flood of addresses: keep the newest only
                self._failures.clear()
            self._failures.setdefault(key, []).append(time.monotonic())

    def authenticate(self, peer: str | None, authorization: str | None, admin: bool,
                     what: str) -> None:
        """`check`, refused outright for a peer over its failures, counting new ones."""
        self.check_peer(peer)
        try:
            self.check(authorization, admin)
        except Unauthenticated:
            self.failed(peer, what)
            raise

    @property
    def active(self) -> bool:
        return bool(self.token or self.admin or self.networks)

    def check_address(self, peer: str | None) -> None:
        """Raise Forbidden unless a management call may come from `peer`.

        `peer`: a REST remote address ("10.0.0.5", "::ffff:10.0.0.5") or a gRPC
        peer ("ipv4:10.0.0.5:4711", "ipv6:[::1]:4711", "unix:/path").
        """
        if not self.networks:
            return
        address = peer_address(peer)
        allowed = (_LOOPBACK if address == "unix" else (address,)) if address else ()
        if any(a in net for a in allowed for net in self.networks if a.version == net.version):
            return
        shown = "a unix socket" if address == "unix" else str(address or peer or "an unknown peer")
        raise Forbidden(f"management calls are accepted only from the addresses in "
                        f"auth.admin_addresses; {shown} is not one of them")

    def check(self, authorization: str | None, admin: bool) -> None:
        """Raise Unauthenticated unless `authorization` ("Bearer <token>") may do this."""
        if not (self.token or self.admin) or not (admin or self.token):
            return  # no token asked, or an admin token alone guards management only
        given = b""
        if authorization and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip().encode()
        ok_admin = bool(self.admin) and hmac.compare_digest(given, self.admin)
        if admin and self.admin:
            if not ok_admin:
                raise Unauthenticated("this call needs the admin token (auth.admin_token) as "
                                      "'Authorization: Bearer <token>'")
            return
        if ok_admin or (self.token and hmac.compare_digest(given, self.token)):
            return
        raise Unauthenticated("a token is needed: send 'Authorization: Bearer <token>'")


def peer_address(peer: str | None):
    """The IP address of a REST or gRPC peer (IPv4-mapped IPv6 as IPv4), "unix", or None."""
    if not peer:
        return None
    text = unquote(peer)
    if text.startswith(("unix:", "unix-abstract:")):
        return "unix"
    if text.startswith("ipv4:"):
        text = text[5:].rpartition(":")[0]
    elif text.startswith("ipv6:"):
        text = text[5:].rpartition(":")[0].strip("[]")
    text = text.split("%", 1)[0]  # an IPv6 zone (fe80::1%eth0)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
