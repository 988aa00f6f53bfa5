"""Replies reach their waiters through one list per waiting process (aiserving.broker.replies)."""

import json
import threading
import time

import pytest
import redis

from aiserving.broker import broker as brk
from aiserving.errors import InferenceError
from aiserving.broker.embedded import EmbeddedRedis


def _queue_and_read(b, uuids, reply_to):
    b.ensure_group("m-1")
    for u in uuids:
        b.enqueue("m-1", {"uuid": u, "path": "/x", "reply": reply_to})
    return b.read("m-1", "c1", 100, 100)


def test_a_batch_of_replies_reaches_each_waiter_with_its_own_result(redis_url):
    front, worker = brk.Broker(redis_url, "n1"), brk.Broker(redis_url, "n1")
    uuids = [f"u{n}" for n in range(6)]
    jobs = _queue_and_read(front, uuids, front.reply_list)
    got = {}

    def wait(u):
        got[u] = front.wait_reply(u, 10)

    waiters = [threading.Thread(target=wait, args=(u,)) for u in uuids[:3]]
    for t in waiters:
        t.start()
    rows = [(mid, f[b"uuid"].decode(), f[b"reply"], b"{}",
             brk.encode_result('{"n":"%s"}' % f[b"uuid"].decode())) for mid, f in jobs]
    worker.finish("m-1", rows)
    for t in waiters:
        t.join(10)
    # Three waited before the replies came, three come after: each gets its own.
    for u in uuids[3:]:
        got[u] = front.wait_reply(u, 10)
    assert got == {u: b'R{"n":"%s"}' % u.encode() for u in uuids}
    assert front.wait_reply("u0", 0.2) is None  # a reply is delivered once
    results = redis.Redis.from_url(redis_url, db=5)
    assert results.llen(front.reply_list) == 0
    assert results.get("u4") == b"{}"  # legacy clients still find every result in db 5


def test_a_job_cannot_make_a_worker_write_to_any_other_key(redis_url):
    b = brk.Broker(redis_url, "n1")
    jobs = _queue_and_read(b, ["a"], "aisrv:jobs:m-1")  # a hostile or broken reply field
    b.finish("m-1", [(mid, "a", f[b"reply"], b"{}", brk.encode_result("{}")) for mid, f in jobs])
    results = redis.Redis.from_url(redis_url, db=5)
    assert not results.exists("aisrv:jobs:m-1")
    assert results.get("a") == b"{}"


def test_waiters_get_the_redis_error_when_redis_goes_away(tmp_path):
    server = EmbeddedRedis(tmp_path / "run").start()
    b = brk.Broker(server.url, "n1")
    b.reply_list  # the pump runs
    outcome = {}

    def wait():
        try:
            outcome["reply"] = b.wait_reply("u1", 60)
        except redis.RedisError as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    server.stop()
    waiter.join(30)
    assert not waiter.is_alive(), "a waiter hung after redis went away"
    assert isinstance(outcome.get("error"), redis.RedisError)
    with pytest.raises(redis.RedisError):
        b.wait_reply("u2", 60)  # no new wait starts while nobody can read replies


def test_without_storing_answered_results_only_callers_that_gave_up_find_theirs_in_db_5(
        redis_url):
    front = brk.Broker(redis_url, "n1")
    worker = brk.Broker(redis_url, "n1", store_answered=False)
    jobs = _queue_and_read(front, ["waited", "gave-up", "failed"], front.reply_list)
    worker.ensure_group("m-1")
    worker.enqueue("m-1", {"uuid": "nobody", "path": "/x", "reply": "0"})  # gRPC: no waiter
    jobs += worker.read("m-1", "c1", 10, 100)
    assert front.wait_reply("gave-up", 0.05) is None  # its time-out passes first
    assert front.wait_reply("failed", 0.05) is None
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=front.wait_reply("waited", 10)))
    waiter.start()
    rows = []
    for mid, f in jobs:
        uuid = f[b"uuid"].decode()
        if uuid == "failed":
            err = InferenceError("the model broke")
            rows.append((mid, uuid, f[b"reply"], brk.failure_text(err), brk.encode_error(err)))
        else:
            rows.append((mid, uuid, f[b"reply"], b'{"u":"%s"}' % uuid.encode(),
                         brk.encode_result('{"u":"%s"}' % uuid)))
    worker.finish("m-1", rows)
    waiter.join(10)
    assert got["r"] == b'R{"u":"waited"}'
    results = redis.Redis.from_url(redis_url, db=5)
    assert results.get("nobody") == b'{"u":"nobody"}'
    # The callers that gave up: stored by their process's pump when the reply came.
    deadline = time.monotonic() + 10
    while results.get("failed") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert results.get("gave-up") == b'{"u":"gave-up"}'
    assert 0 < results.ttl("gave-up") <= 3600
    assert json.loads(results.get("failed")) == {"status": "failed", "code": InferenceError.code,
                                                 "message": "the model broke"}
    assert results.get("waited") is None  # answered to its caller: not stored
