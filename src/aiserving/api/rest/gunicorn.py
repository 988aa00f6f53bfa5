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
With HTTPS, gevent's server does the TLS handshake before `handle` runs, on a
socket with no time-out: the context's `wrap_socket` is wrapped so that the
handshake is bounded by the same time-out (a client that connects and never
says hello would otherwise hold its connection slot forever).

Imported only by gunicorn in the front's worker processes (it imports gevent).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

_write = wsgi.Response.write


def _write_whole(self, arg):
    """A response whose body is one piece goes out with its headers in one send.

    gunicorn sends the headers and the body apart: two system calls and two TCP
    segments for every small JSON answer, on a box where the front's time is
    mostly system calls.
    """
    if (not self.headers_sent and not self.chunked and isinstance(arg, bytes)
            and self.response_length == len(arg) and self.sent == 0):
        head = self.default_headers()
        head.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])
        self.headers_sent = True
        self.sent = len(arg)
        util.write(self.sock, util.to_bytestring("%s\r\n" % "".join(head), "latin-1") + arg)
        return
    _write(self, arg)


wsgi.Response.write = _write_whole


class GuardedGeventWorker(GeventWorker):
    read_timeout = 10.0

    def init_process(self):
        resolved = os.environ.get("AISRV_RESOLVED_SETTINGS")
        if resolved:
            self.read_timeout = float(json.loads(resolved)["http.read_timeout_s"])
        # Set directly: gunicorn's validator inspects the hook's signature, which a
        # Cython-compiled function need not offer.
        self.cfg.settings["ssl_context"].value = self._ssl_context
        super().init_process()
        # A clean end (the worker stopped serving): leave without the interpreter's
        # finalization, where gevent's patched locks meet greenlets being torn down and
        # logging's weakref callbacks printed "Exception ignored ... greenlet is being
        # finalized" on every stop.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _ssl_context(self, config, default_factory):
        context = default_factory()
        wrap = context.wrap_socket
        timeout = self.read_timeout

        def wrap_socket(sock, *args, **kwargs):
            sock.settimeout(timeout)
            return wrap(sock, *args, **kwargs)

        context.wrap_socket = wrap_socket
        return context

    def handle(self, listener, client, addr):
        # GeventWorker.handle makes the socket blocking with no time-out at all.
        client.settimeout(self.read_timeout)
        AsyncWorker.handle(self, listener, client, addr)
