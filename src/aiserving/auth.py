"""Who may call the node: bearer tokens, checked the same way at both doors.

With `auth.token` set, every REST call but `/healthz` needs `Authorization: Bearer
<token>`, and every gRPC call the same as `authorization` metadata. With
`auth.admin_token` set too, management calls (loading and unloading models,
creating, changing, deleting, importing and exporting stored models, uploads and
downloads) need the admin token; it also passes wherever the plain token does.
Tokens are compared in constant time. Without tokens (the default, what fleets
in the field speak) nothing is asked: the doors stay on loopback unless opened.
"""

from __future__ import annotations

import hmac

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


class Guard:
    def __init__(self, token: str, admin_token: str):
        self.token = token.encode()
        self.admin = admin_token.encode()

    @property
    def active(self) -> bool:
        return bool(self.token or self.admin)

    def check(self, authorization: str | None, admin: bool) -> None:
        """Raise Unauthenticated unless `authorization` ("Bearer <token>") may do this."""
        if not self.active:
            return
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
