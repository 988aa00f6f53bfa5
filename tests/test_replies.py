"""Replies reach their waiters through one list per waiting process (aiserving.replies)."""

import threading

import pytest
import redis

from aiserving import broker as brk
from aiserving.redis_server import EmbeddedRedis


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
