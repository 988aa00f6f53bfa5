"""Redis and the fleet: which redis (embedded or configured), its keys, the node registry."""

from __future__ import annotations

import re

from aiserving.config.checks import Setting, host_ports, one_of, positive, redis_url

TITLE = "Redis and the fleet"

SETTINGS: tuple[Setting, ...] = (
    # legacy keys (contract, section 4)
    Setting("redis.host", "", "str",
            "Redis host. Empty: the node starts an embedded redis of its "
            "own on a unix socket under `<storage>/run/`."),
    Setting("redis.port", "6379", "str",
            "Redis port: of the configured redis, or where the embedded one also listens over "
            "TCP (on `redis.bind`) so legacy clients can read results; \"0\": no TCP listener.",
            lambda v: None if v.isdigit() and 0 <= int(v) < 65536 else "must be a TCP port number"),
    Setting("redis.recover_s", 60.0, "float",
            "Longest the node keeps running while redis does not answer (an embedded redis "
            "that exited is restarted at once). Past it the node exits with code 3, so the "
            "box's supervisor (systemd, Docker) restarts it.", positive),
    Setting("redis.bind", "127.0.0.1", "str",
            "Address the embedded redis listens on over TCP (for legacy db 5 readers). Beyond "
            "loopback it needs `redis.password`; the node refuses to start otherwise."),
    Setting("redis.password", "", "str",
            "Password of the embedded redis (`requirepass`; every client, the node's own "
            "included, then authenticates), or of the configured one (unless `redis.url` "
            "carries one)."),
    Setting("redis.url", "", "str",
            "The redis to use, as a URL; set, it wins over `redis.host`/`redis.port` and "
            "`redis.sentinels`. `redis://[user:password@]host:port[/db]`, `rediss://...` for "
            "TLS (CA: `redis.tls_ca` or `?ssl_ca_certs=`; client certificate: "
            "`?ssl_certfile=&ssl_keyfile=`), or Redis Sentinel: "
            "`redis+sentinel://[user:password@]host:port,host:port/service[/db]` "
            "(`rediss+sentinel://` for TLS; `?sentinel_password=` if the sentinels ask one). "
            "The db number holds the node's own keys; results for legacy clients stay in "
            "db 5. Empty: `redis.host`, else the embedded redis.", redis_url),
    Setting("redis.sentinels", [], "list",
            "Redis Sentinel addresses (`host:port,host:port`): the node uses the primary "
            "they name for `redis.sentinel_service` and follows its failovers. Ignored when "
            "`redis.url` is set; for TLS or sentinel passwords use its `redis+sentinel://` "
            "form.", host_ports),
    Setting("redis.sentinel_service", "mymaster", "str",
            "The service (master) name the sentinels of `redis.sentinels` monitor.",
            lambda v: None if v.strip() else "must not be empty"),
    Setting("redis.tls_ca", "", "str",
            "PEM CA certificate(s) a `rediss://` redis's certificate is checked against "
            "(a relative path is taken from the settings file's folder). Empty: the system's "
            "CAs."),
    Setting("redis.key_prefix", "aisrv:", "str",
            "Start of every key the node writes in redis (jobs, replies, state, fleet "
            "registry): nodes with the same prefix form one fleet and share job queues; "
            "another prefix is another fleet, invisible to this one. Results for legacy "
            "clients stay under the bare uuid in db 5.",
            lambda v: None if re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", v)
            else "must be 1 to 64 letters, digits or _ . : - { }"),
    # keys of this product
    Setting("redis.durability", "always", "str",
            "What the embedded redis keeps on disk (an append-only file under "
            "`<storage>/run/`), so queued jobs and stored results survive a crash or a power "
            "cut: `always` -- every accepted job and stored result (written to disk before "
            "the caller is told it was accepted); `everysec` -- all but at most the last "
            "second or two; `off` -- nothing (memory only: a restart loses every queued job "
            "and stored result). Not used with a configured redis: make that one persist "
            "(`appendonly yes`); the node logs at start whether it does.",
            one_of("always", "everysec", "off")),
    Setting("fleet.node_ttl_s", 10.0, "float",
            "The node announces itself in the fleet registry of its redis (`GET "
            "/api/v1alpha/nodes`, gRPC `aiserving.fleet.v1.Fleet`) every third of this; a "
            "node not heard from for this long drops out of it.",
            lambda v: None if v >= 1 else "must be at least 1"),
    Setting("fleet.shared_inputs", [], "list",
            "Folders (within `input.roots`) every node of the fleet mounts at the same path. "
            "A `/detect` or InferenceLocal job naming a file in one may run on any node "
            "declaring that folder; one naming any other file runs on the node that "
            "accepted it. Inline inputs run on whichever node serving the model is free."),
    Setting("fleet.advertise_host", "", "str",
            "Host name or address the fleet registry shows for this node's doors. Empty: "
            "each door's bind address, the host name where it binds every interface."),
)
