"""The gunicorn worker class of the REST front: gevent, with a read time-out per connection.

Why gevent: each connection is a greenlet, not a thread, so idle, slow or
half-sent connections cost a little memory each and never take a request slot
from anyone else (under gthread, 64 half-sent requests pinned all 2 x 32 threads
and `/healthz` itself hung). Waiting on redis for a result yields too, so a
worker holds thousands of waiting `/detect` calls.

Why the time-out: gunicorn's gevent worker bounds only the wait for a request's
headers (`keep-alive`), not the body. Every blocking operation on the client
socket -- reading headers or body, writing the answer -- gives up after
`http.read_timeout_s`; the connection is then closed. Waiting for a result does
not touch the client socket and is bounded by `request.timeout_s` instead.

Imported only by gunicorn in the front's worker processes (it imports gevent).
"""

from __future__ import annotations

import json
import os

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker


class GuardedGeventWorker(GeventWorker):
    read_timeout = 10.0

    def init_process(self):
        resolved = os.environ.get("AISRV_RESOLVED_SETTINGS")
        if resolved:
            self.read_timeout = float(json.loads(resolved)["http.read_timeout_s"])
        super().init_process()

    def handle(self, listener, client, addr):
        # GeventWorker.handle makes the socket blocking with no time-out at all.
        client.settimeout(self.read_timeout)
        AsyncWorker.handle(self, listener, client, addr)
