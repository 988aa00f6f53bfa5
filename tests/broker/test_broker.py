import json

import pytest
import redis

from aiserving.broker import broker as brk
from aiserving.errors import ConfigError, QueueFull
from aiserving.broker.embedded import EmbeddedRedis


def test_queue_is_bounded_and_refuses_at_once(redis_url):
    b = brk.Broker(redis_url, "n1", queue_max=3)
    for n in range(3):
        b.enqueue("m-1", {"uuid": str(n), "path": "/x"})
    with pytest.raises(QueueFull) as err:
        b.enqueue("m-1", {"uuid": "3", "path": "/x"})
    assert err.value.http_status == 503
    assert b.db.xlen(b.keys.stream("m-1", brk.NODE_TAG)) == 3  # a path: this node's stream


def test_finished_jobs_free_their_queue_slot_and_store_results(redis_url):
    b = brk.Broker(redis_url, "n1", queue_max=2, result_ttl=100)
    b.ensure_group("m-1")
    b.enqueue("m-1", {"uuid": "u1", "path": "/a", "reply": b.reply_list})
    b.enqueue("m-1", {"uuid": "u2", "path": "/b", "reply": "0"})
    jobs = b.read("m-1", "c1", 10, 100)
    assert [f[b"uuid"] for _, f in jobs] == [b"u1", b"u2"]
    b.finish("m-1", [(jobs[0][0], "u1", jobs[0][1][b"reply"], b'{"a":1}',
                      brk.encode_result('{"a":1}')),
                     (jobs[1][0], "u2", jobs[1][1][b"reply"], b'{"b":2}',
                      brk.encode_result('{"b":2}'))])
    assert b.db.xlen(b.keys.stream("m-1", brk.NODE_TAG)) == 0
    results = redis.Redis.from_url(redis_url, db=5)
    assert json.loads(results.get("u1")) == {"a": 1}
    assert 0 < results.ttl("u1") <= 100
    assert b.wait_reply("u1", 1) == b'R{"a":1}'
    assert b.wait_reply("u2", 0.1) is None  # nobody waits on u2: no reply list


def test_jobs_of_a_dead_consumer_are_claimed(redis_url):
    b = brk.Broker(redis_url, "n1")
    b.ensure_group("m-1")
    b.enqueue("m-1", {"uuid": "u1", "path": "/a"})
    (msg_id, _), = b.read("m-1", "dead", 10, 100)
    assert b.claim_stale("m-1", "alive", idle_ms=60_000, count=10) == []
    claimed = b.claim_stale("m-1", "alive", idle_ms=0, count=10)
    assert [m for m, _ in claimed] == [msg_id]
    assert b.deliveries("m-1", msg_id) == 2


def test_a_second_node_on_the_same_storage_is_refused(tmp_path):
    first = EmbeddedRedis(tmp_path / "run").start()
    try:
        with pytest.raises(ConfigError, match="in use"):
            EmbeddedRedis(tmp_path / "run").start()
    finally:
        first.stop()
    assert first.process.poll() is not None


def test_inline_input_bytes_are_bounded_per_model(redis_url):
    b = brk.Broker(redis_url, "n1", queue_max=100, inline_max=1000)
    b.ensure_group("m-2")
    b.enqueue("m-2", {"uuid": "a", "image": b"x" * 600})
    b.enqueue("m-2", {"uuid": "p", "path": "/by/path"})  # paths hold no bytes in redis
    with pytest.raises(QueueFull, match="inline input bytes"):
        b.enqueue("m-2", {"uuid": "b", "image": b"x" * 500})
    assert b.db.xlen(brk.stream_key("m-2")) == 1  # inline: the model's stream
    assert b.db.xlen(b.keys.stream("m-2", brk.NODE_TAG)) == 1
    jobs = b.read("m-2", "c1", 10, 100)
    # Finishing the job gives its bytes back to the budget.
    b.finish("m-2", [(jobs[0][0], "a", False, b"{}", brk.encode_result("{}"))], inline=600)
    b.enqueue("m-2", {"uuid": "b", "image": b"x" * 500})
    assert int(b.db.get(brk.inline_key("m-2"))) == 500


def test_a_urls_db_holds_the_nodes_keys_and_results_stay_in_db_5(redis_url):
    url = redis_url + ("&" if "?" in redis_url else "?") + "db=3"
    b = brk.Broker(url, "n1", result_ttl=100)
    b.ensure_group("m-1")
    b.enqueue("m-1", {"uuid": "u1", "path": "/a", "reply": b.reply_list})
    jobs = b.read("m-1", "c1", 10, 100)
    b.finish("m-1", [(jobs[0][0], "u1", jobs[0][1][b"reply"], b"{}", brk.encode_result("{}"))])
    # The pipeline went to db 5 for the result and back to db 3, not to db 0.
    b.enqueue("m-1", {"uuid": "u2", "path": "/b"})
    db = {n: redis.Redis.from_url(redis_url, db=n) for n in (0, 3, 5)}
    assert db[0].dbsize() == 0
    assert db[3].xlen(b.keys.stream("m-1", brk.NODE_TAG)) == 1
    assert db[5].get("u1") == b"{}"
    assert b.wait_reply("u1", 5) == b"R{}"


def test_a_key_prefix_keeps_every_key_and_reply_of_a_fleet_apart(redis_url):
    mine, other = brk.Broker(redis_url, "n1", prefix="a:"), brk.Broker(redis_url, "n1")
    mine.ensure_group("m-1")
    mine.enqueue("m-1", {"uuid": "u1", "path": "/a", "reply": mine.reply_list})
    # A job naming another fleet's reply list: its worker must not write there.
    mine.enqueue("m-1", {"uuid": "u2", "path": "/b", "reply": other.reply_list})
    assert other.db.keys("aisrv:*") == []
    jobs = mine.read("m-1", "c1", 10, 100)
    mine.finish("m-1", [(mid, f[b"uuid"].decode(), f[b"reply"], b"{}", brk.encode_result("{}"))
                        for mid, f in jobs])
    assert mine.reply_list.startswith("a:replies:n1:")
    assert mine.wait_reply("u1", 5) == b"R{}"
    assert other.wait_reply("u2", 0.2) is None
    assert all(k.startswith(b"a:") for k in mine.db.keys("*"))


def test_path_jobs_go_only_to_nodes_that_can_read_the_file(redis_url, tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    (private / "link.png").symlink_to(shared / "x.png")  # resolved: a shared file
    a, b = (brk.Broker(redis_url, n, shared_inputs=[str(shared)]) for n in ("a", "b"))
    c = brk.Broker(redis_url, "c")  # mounts no shared folder
    for node in (a, b, c):
        node.ensure_group("m-1")
    a.enqueue("m-1", {"uuid": "own", "path": str(private / "y.png")})
    a.enqueue("m-1", {"uuid": "shared", "path": str(shared / "x.png")})
    a.enqueue("m-1", {"uuid": "linked", "path": str(private / "link.png")})
    a.enqueue("m-1", {"uuid": "inline", "image": b"x"})

    def uuids(jobs):
        return sorted(f[b"uuid"].decode() for _, f in jobs)

    taken_c = c.read("m-1", "c.1", 10, 100)
    assert uuids(taken_c) == ["inline"]  # the only job c can run
    taken_b = b.read("m-1", "b.1", 10, 100)
    assert uuids(taken_b) == ["linked", "shared"]
    assert b.read("m-1", "b.1", 10, 100) == []  # a's own job is not b's to take
    taken_a = a.read("m-1", "a.1", 10, 100)
    assert uuids(taken_a) == ["own"]
    # The ids carry their stream: finishing acknowledges and deletes in the right one.
    for node, jobs in ((a, taken_a), (b, taken_b), (c, taken_c)):
        node.finish("m-1", [(mid, f[b"uuid"].decode(), b"0", b"{}", brk.encode_result("{}"))
                            for mid, f in jobs])
    assert [a.db.xlen(k) for k in a.streams("m-1").values()] == [0, 0, 0]
    assert a.db.xlen(b.keys.stream("m-1", brk.NODE_TAG)) == 0
    assert a.queue_depths() == {}  # no backend published: nothing to report
    assert sorted(a.streams("m-1")) == sorted(b.streams("m-1"))
    assert a.streams("m-1")[brk.NODE_TAG] != b.streams("m-1")[brk.NODE_TAG]


def test_a_dead_workers_own_stream_jobs_are_claimed_and_failed_by_their_tagged_ids(redis_url):
    b = brk.Broker(redis_url, "n1")
    b.ensure_group("m-1")
    b.enqueue("m-1", {"uuid": "p1", "path": "/a"})
    b.enqueue("m-1", {"uuid": "p2", "path": "/b", "reply": b.reply_list})
    taken = b.read("m-1", "dead", 10, 100)
    assert all(mid.startswith(b"n|") for mid, _ in taken)
    claimed = b.claim_stale("m-1", "alive", idle_ms=0, count=10)
    assert [m for m, _ in claimed] == [m for m, _ in taken]
    assert b.deliveries("m-1", claimed[0][0]) == 2
    from aiserving.errors import InferenceError
    answered = b.fail_pending("m-1", "alive", [m.decode() for m, _ in claimed],
                              InferenceError("stuck"))
    assert sorted(answered) == ["p1", "p2"]
    assert b.db.xlen(b.keys.stream("m-1", brk.NODE_TAG)) == 0
    assert json.loads(redis.Redis.from_url(redis_url, db=5).get("p1"))["status"] == "failed"
    assert b.wait_reply("p2", 5).startswith(b"E")
