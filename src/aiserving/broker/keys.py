"""Every key the node writes in redis, named in one place.

Every name starts with the key prefix (`redis.key_prefix`, "aisrv:"), so fleets with
different prefixes share one redis without seeing each other. A model's jobs live in
one stream for inline inputs, one per node for the files that node accepted
(`...:@node:<name>`) and one per shared input folder (`...:@share:<hash>`); the
message ids a worker holds carry their stream as a tag (`tag_id`).
"""

from __future__ import annotations

import hashlib

RESULT_DB = 5  # the legacy contract: results under the bare uuid, whatever the URL's db
DEFAULT_PREFIX = "aisrv:"
GROUP = "workers"
REPLY_TTL_S = 120


def stream_key(fullhash: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}jobs:{fullhash}"


def share_tag(folder: str) -> str:
    """The tag of a shared input folder's streams: the same on every node mounting it."""
    return "s" + hashlib.sha1(folder.encode()).hexdigest()[:10]


NODE_TAG = "n"  # the accepting node's own stream of a model


def tag_id(tag: str, msg_id: bytes | str) -> bytes:
    """A message id as workers and the watchdog hold it: its stream's tag in front
    (none for the model's stream), so acknowledging or failing it finds its stream."""
    msg_id = msg_id if isinstance(msg_id, bytes) else msg_id.encode()
    return msg_id if not tag else f"{tag}|".encode() + msg_id


def untag_id(tagged: bytes | str) -> tuple[str, bytes]:
    tagged = tagged if isinstance(tagged, bytes) else tagged.encode()
    tag, _, msg_id = tagged.rpartition(b"|")
    return tag.decode(), msg_id


def inline_key(fullhash: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Bytes of inline inputs (gRPC InferenceRemote) waiting or in flight for a model."""
    return f"{prefix}inline:{fullhash}"


def inline_size(fields: dict) -> int:
    """Bytes a job holds inline (an image, Open Inference Protocol tensors), counted
    against `queue.max_inline_bytes`; keys as queued (str) or as read back (bytes)."""
    return sum(len(fields.get(k) or fields.get(k.encode()) or b"") for k in ("image", "tensors"))


def reply_key(uuid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The reply list of one request, as releases before per-process lists used it."""
    return f"{prefix}reply:{uuid}"


class NodeKeys:
    """Key names of one node (several nodes may share a redis) and of its fleet (the
    nodes sharing its key prefix, hence its job streams)."""

    def __init__(self, node: str, prefix: str = DEFAULT_PREFIX):
        self.node = node
        self.prefix = prefix
        self.reply_lists = f"{prefix}replies:"  # + node:pid:nonce, in db 5 (replies.py)
        prefix = f"{prefix}node:{node}"
        self.backends = f"{prefix}:backends"  # hash: bid -> backend JSON (written by the node only)
        self.rest_bid = f"{prefix}:rest_bid"  # the backend legacy REST calls go to
        # hash: bid -> the routing part of the record (what the front needs per request),
        # and a counter bumped whenever any route or rest_bid changes.
        self.routes = f"{prefix}:routes"
        self.version = f"{prefix}:routes_version"
        self.alive = f"{prefix}:alive"  # heartbeat with a TTL
        self.commands = f"{prefix}:commands"  # list: commands from the REST front

    def command_reply(self, cid: str) -> str:
        return f"{self.prefix}cmdreply:{cid}"

    def stream(self, fullhash: str, tag: str = "") -> str:
        """The model's stream (inline inputs), or the one a tag names: this node's own
        (NODE_TAG) or a shared input folder's (`share_tag`)."""
        base = stream_key(fullhash, self.prefix)
        if not tag:
            return base
        if tag == NODE_TAG:
            return f"{base}:@node:{self.node}"
        return f"{base}:@share:{tag[1:]}"

    def inline(self, fullhash: str) -> str:
        return inline_key(fullhash, self.prefix)

    def reply(self, uuid: str) -> str:
        return reply_key(uuid, self.prefix)
