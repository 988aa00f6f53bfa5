"""The fleet registry against a real redis: listing, TTL expiry, clean withdrawal."""

import json
import threading
import time
from types import SimpleNamespace

import redis

from aiserving.broker import broker as brk
from aiserving.config import Settings
from aiserving.node.fleet import Announcer, FleetKeys, NodeRegistry, reachable


def _info(name, **extra):
    return {"name": name, "version": "1.0.0", "models": [], **extra}


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_nodes_lists_live_entries_sorted_by_name(redis_url):
    registry = NodeRegistry(redis.Redis.from_url(redis_url))
    assert registry.nodes() == []
    for name in ("charlie", "alpha", "bravo"):
        registry.announce(_info(name, addresses={"rest": f"http://{name}:8080"}), ttl_s=30)
    listed = registry.nodes()
    assert [n["name"] for n in listed] == ["alpha", "bravo", "charlie"]
    assert listed[0]["addresses"] == {"rest": "http://alpha:8080"}
    # Announcing again replaces the entry, never adds a second one.
    registry.announce(_info("alpha", version="2.0.0"), ttl_s=30)
    listed = registry.nodes()
    assert [n["name"] for n in listed] == ["alpha", "bravo", "charlie"]
    assert listed[0]["version"] == "2.0.0"


def test_an_entry_not_renewed_drops_out_after_its_ttl(redis_url):
    db = redis.Redis.from_url(redis_url)
    registry = NodeRegistry(db)
    registry.announce(_info("gone"), ttl_s=1)
    registry.announce(_info("stays"), ttl_s=60)
    assert [n["name"] for n in registry.nodes()] == ["gone", "stays"]
    assert _wait_until(lambda: [n["name"] for n in registry.nodes()] == ["stays"])
    # Reading pruned the expired name from the set of names as well.
    assert db.smembers(FleetKeys().names) == {b"stays"}


def test_renewed_entries_outlive_their_ttl(redis_url):
    registry = NodeRegistry(redis.Redis.from_url(redis_url))
    registry.announce(_info("beating"), ttl_s=1)
    for _ in range(6):  # 1.5 s of heartbeats, each well inside the TTL
        time.sleep(0.25)
        registry.announce(_info("beating"), ttl_s=1)
        assert [n["name"] for n in registry.nodes()] == ["beating"]


def test_withdraw_removes_a_node_at_once(redis_url):
    db = redis.Redis.from_url(redis_url)
    registry = NodeRegistry(db)
    registry.announce(_info("a"), ttl_s=60)
    registry.announce(_info("b"), ttl_s=60)
    registry.withdraw("a")
    assert [n["name"] for n in registry.nodes()] == ["b"]
    assert not db.exists(FleetKeys().entry("a"))
    registry.withdraw("never-there")  # nothing to remove is no error
    assert [n["name"] for n in registry.nodes()] == ["b"]


def test_a_damaged_entry_is_left_out(redis_url):
    db = redis.Redis.from_url(redis_url)
    registry = NodeRegistry(db)
    keys = FleetKeys()
    registry.announce(_info("good"), ttl_s=60)
    db.set(keys.entry("bad"), b"not json{")
    db.set(keys.entry("list"), json.dumps([1, 2]))
    db.sadd(keys.names, "bad", "list")
    assert [n["name"] for n in registry.nodes()] == ["good"]


def test_reachable_addresses():
    assert reachable("127.0.0.1:50051", "") == "127.0.0.1:50051"
    assert reachable("[::1]:50051", "") == "[::1]:50051"
    assert reachable("[::]:50051", "edge-7.local") == "edge-7.local:50051"
    assert reachable("0.0.0.0:8080", "10.0.0.5") == "10.0.0.5:8080"
    assert reachable("0.0.0.0:8080", "fe80::1") == "[fe80::1]:8080"
    assert not reachable("0.0.0.0:8080", "").startswith("0.0.0.0")
    assert reachable("", "") == ""


def test_the_announcer_beats_describes_its_load_and_withdraws(redis_url, tmp_path):
    """The node daemon's heartbeat thread, with a stand-in node holding no backends."""
    settings = Settings.load(environ={"AISRV_STORAGE": str(tmp_path), "AISRV_FLEET_NODE_TTL_S": "1",
                                      "AISRV_HTTP_PORT": "8123",
                                      "AISRV_GRPC_ADDRESS": "127.0.0.1:50123"})
    db = brk.connect(redis_url)
    broker = brk.Broker(redis_url, "edge-1")
    node = SimpleNamespace(settings=settings, db=db, name="edge-1", keys=broker.keys, broker=broker,
                           lock=threading.RLock(),
                           backends={}, stopping=threading.Event(), outage=brk.Outage("test"))
    announcer = Announcer(node)
    # A stream and group with jobs this node's consumer holds, and one another node holds.
    stream = brk.stream_key("f" * 32 + "-1")
    db.xgroup_create(stream, brk.GROUP, id="0", mkstream=True)
    for n in range(3):
        db.xadd(stream, {"uuid": str(n)})
    db.xreadgroup(brk.GROUP, "edge-1.0.1.0", {stream: ">"}, count=2)
    db.xreadgroup(brk.GROUP, "edge-10.0.1.0", {stream: ">"}, count=1)
    load = announcer._load([{"fullhash": "f" * 32 + "-1"}, {"fullhash": "e" * 32 + "-1"}])
    assert load["in_flight"] == 2
    assert {q["fullhash"]: (q["depth"], q["in_flight"]) for q in load["queues"]} == {
        "f" * 32 + "-1": (3, 2), "e" * 32 + "-1": (0, 0)}

    thread = threading.Thread(target=announcer.run)
    thread.start()
    try:
        registry = NodeRegistry(db)
        assert _wait_until(lambda: [n["name"] for n in registry.nodes()] == ["edge-1"])
        entry = registry.nodes()[0]
        assert entry["addresses"]["rest"] == "http://127.0.0.1:8123"
        assert entry["addresses"]["grpc"] == "127.0.0.1:50123"
        assert entry["models"] == [] and entry["ttl_s"] == 1.0
        assert set(entry["resources"]) == {"cpu", "mem", "gpu", "dsk"}
        first_seen = entry["last_seen"]
        # Past several TTLs it is still there: the heartbeat renews it.
        time.sleep(2.5)
        entry = registry.nodes()[0]
        assert entry["last_seen"] > first_seen and entry["started_at"] <= first_seen
        assert _wait_until(lambda: registry.nodes()[0]["backend_types"] is not None, 120)
        assert isinstance(registry.nodes()[0]["backend_types"], list)
    finally:
        node.stopping.set()
        thread.join(10)
    announcer.withdraw()
    assert registry.nodes() == []


def test_fleets_under_different_key_prefixes_do_not_see_each_other(redis_url):
    db = redis.Redis.from_url(redis_url)
    ours, theirs = NodeRegistry(db), NodeRegistry(db, FleetKeys("other:"))
    ours.announce(_info("a"), ttl_s=60)
    theirs.announce(_info("b"), ttl_s=60)
    assert [n["name"] for n in ours.nodes()] == ["a"]
    assert [n["name"] for n in theirs.nodes()] == ["b"]
    assert db.exists("other:fleet:node:b") and db.exists("aisrv:fleet:node:a")


def test_models_once_served_are_remembered_after_their_node_is_gone(redis_url):
    registry = NodeRegistry(brk.connect(redis_url))
    registry.announce({"name": "gpu-1", "last_seen": 1234.5, "models": [
        {"name": "far", "version": "2", "serving": "h-2"},
        {"name": "idle", "version": "1", "serving": ""}]}, ttl_s=0.2)
    time.sleep(0.4)
    assert registry.nodes() == []  # the node's entry expired...
    # ...what it served is still known: a request for it is told who served it last.
    assert registry.last_served("far") == {"node": "gpu-1", "at": 1234.5}
    assert registry.last_served("far", "2") == {"node": "gpu-1", "at": 1234.5}
    assert registry.last_served("far", "3") is None
    assert registry.last_served("idle") is None  # loaded nowhere: never served
    assert registry.last_served("nowhere") is None


def test_consumers_of_nodes_gone_from_the_fleet_are_forgotten_once_they_hold_nothing(
        redis_url, tmp_path):
    settings = Settings.load(environ={"AISRV_STORAGE": str(tmp_path)})
    db = brk.connect(redis_url)
    broker = brk.Broker(redis_url, "edge-1")
    node = SimpleNamespace(settings=settings, db=db, name="edge-1", keys=broker.keys, broker=broker,
                           lock=threading.RLock(), backends={}, stopping=threading.Event(),
                           outage=brk.Outage("test"))
    announcer = Announcer(node)
    NodeRegistry(db).announce({"name": "edge.2", "models": []}, ttl_s=30)  # alive
    broker.ensure_group("m-1")
    stream = broker.keys.stream("m-1")
    for n in range(2):
        db.xadd(stream, {"uuid": str(n)})
    db.xreadgroup(brk.GROUP, "dead.box.0.1.0", {stream: ">"}, count=1)  # holds a job
    db.xreadgroup(brk.GROUP, "dead.box.0.1.1", {stream: ">"}, count=1)
    db.xack(stream, brk.GROUP, *[r["message_id"] for r in db.xpending_range(
        stream, brk.GROUP, "-", "+", 10, consumername="dead.box.0.1.1")])  # holds none
    for name in ("edge-1.0.1.0", "edge.2.0.1.0", "somebody-else"):
        db.xgroup_createconsumer(stream, brk.GROUP, name)

    assert announcer.tidy_consumers({"m-1"}) == []  # none idle for two TTLs yet
    assert announcer.tidy_consumers({"m-1"}, idle_ms=0) == ["dead.box.0.1.1"]
    left = sorted(c["name"].decode() for c in db.xinfo_consumers(stream, brk.GROUP))
    assert left == ["dead.box.0.1.0", "edge-1.0.1.0", "edge.2.0.1.0", "somebody-else"]
