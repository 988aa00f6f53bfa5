"""The doors: REST, gRPC, OIP addresses, tokens, admin addresses, TLS, the device key."""

from __future__ import annotations

from aiserving.config.checks import Setting, networks, non_negative, positive

TITLE = "Doors, access and TLS"

SETTINGS: tuple[Setting, ...] = (
    # keys of this product
    Setting("http.host", "127.0.0.1", "str", "Address the REST front binds to."),
    Setting("http.port", 8080, "int", "REST port (`--port` overrides).",
            lambda v: None if 0 < v < 65536 else "must be a TCP port between 1 and 65535"),
    Setting("http.workers", 0, "int",
            "gunicorn worker processes of the REST front; 0 = one per two cores (at least 1). "
            "One gevent process holds thousands of waiting requests; a second one pays off "
            "only where the front's CPU time, not the model's, is the limit, and each costs "
            "about 40 MB.", non_negative),
    Setting("http.connections", 1000, "int",
            "Most client connections one REST worker process serves at once (gevent "
            "greenlets: waiting `/detect` calls and idle keep-alive connections included); "
            "more wait in the listen backlog.", positive),
    Setting("http.read_timeout_s", 10.0, "float",
            "Longest the REST front waits on a client's socket for one read or write (a "
            "request's headers or body, the answer); slower or half-sent connections are "
            "closed. Idle keep-alive connections close after 2 s.", positive),
    Setting("http.max_waiting_per_model", 0, "int",
            "Most `/detect` requests one REST worker process keeps waiting on one model; past "
            "it, 503 at once, so a stuck model cannot take every connection slot from the "
            "others. 0: half of `http.connections`.", non_negative),
    Setting("grpc.address", "127.0.0.1:50051", "str",
            "gRPC listen address (`host:port`; a bare port means `[::]:port`). Loopback "
            "unless set: `[::]:50051` or `0.0.0.0:50051` opens it to the network. The old "
            "product's settings key `port` and variable `AISRV_PORT` set it too (an old "
            "device's file keeps listening where it did).",
            lambda v: None if v.rpartition(":")[2].isdigit() else "must be host:port"),
    Setting("grpc.threads", 16, "int", "Threads serving gRPC calls.", positive),
    Setting("oip.grpc_address", "127.0.0.1:8001", "str",
            "Listen address (`host:port`) of the Open Inference Protocol (KServe v2) gRPC "
            "service, `inference.GRPCInferenceService`, in the node daemon (`grpc.threads` "
            "threads of its own; the tokens and TLS of the legacy gRPC API). Loopback unless set. "
            "Empty: off. (The REST form is always served under `/v2` on the REST front.)",
            lambda v: None if not v or v.rpartition(":")[2].isdigit()
            else "must be host:port, or empty (off)"),
    Setting("auth.token", "", "str",
            "Bearer token every REST call but `/healthz` and every gRPC call must carry "
            "(`Authorization: Bearer <token>`; gRPC metadata `authorization`). Empty: none "
            "asked, as the old product."),
    Setting("auth.admin_token", "", "str",
            "Bearer token management calls must carry (loads, unloads, model create/change/"
            "delete/import/export, uploads, downloads); it passes wherever `auth.token` does. "
            "Empty: `auth.token` covers them. Set alone, it guards management calls only."),
    Setting("crypto.device_key", "", "str",
            "This device's private key (PEM; `aiserving device-key` makes it, mode 0600): "
            "bundles sealed for its public key (`aiserving bundle encrypt`) load without "
            "any key in the request. A relative path is taken from the settings file's "
            "folder. Empty: `<storage>/keys/device-key.pem`."),
    Setting("auth.admin_addresses", [], "list",
            "Addresses management calls (those `auth.admin_token` covers) are accepted from: "
            "IP addresses or CIDR networks (e.g. `127.0.0.1,10.0.0.0/8`), checked against the "
            "connection's own peer address (never `X-Forwarded-For`); others get 403 / "
            "PERMISSION_DENIED. With tokens set, both must pass. Empty: no address check.",
            networks),
    Setting("auth.max_failures", 10, "int",
            "Failed authentications (a wrong or missing token) one peer address may make per "
            "minute; past it every call from that address is refused (429 with Retry-After "
            "/ RESOURCE_EXHAUSTED) until the minute is over. Each failure is logged with "
            "the peer (repeats summed up). 0: no limit.", non_negative),
    Setting("tls.cert", "", "str",
            "PEM certificate (chain) of the node: with `tls.key`, gRPC uses TLS and the REST "
            "front serves HTTPS only. A relative path is taken from the settings file's "
            "folder. Empty: both doors speak plain text, as the old product."),
    Setting("tls.key", "", "str",
            "PEM private key of `tls.cert` (not passphrase-protected; keep it mode 0600)."),
    Setting("tls.client_ca", "", "str",
            "PEM CA certificate(s) gRPC clients must present a certificate from (mutual TLS); "
            "needs `tls.cert`. Empty: no client certificate asked. REST does not ask one."),
    Setting("grpc.max_message_bytes", 0, "int",
            "Largest gRPC message the node receives or sends; a larger one is refused with "
            "RESOURCE_EXHAUSTED. 0: room for the base64 of a `request.max_image_bytes` "
            "InferenceRemote image (about 43 MiB by default). At least 2 MiB + 64 KiB (an "
            "UploadBin chunk).",
            lambda v: None if v == 0 or v >= 2 * 1024 ** 2 + 64 * 1024
            else "must be 0 or at least 2162688 (a 2 MiB upload chunk and its envelope)"),
    Setting("grpc.load_timeout_s", 300.0, "float",
            "Longest CreateAndLoadModel waits for the model to run before it gives up and "
            "removes the backend it created.", positive),
    Setting("http.max_body_bytes", 1024 * 1024, "int",
            "Largest REST request body; a larger one is refused with 413 before it is read.",
            positive),
)
