"""Redis Sentinel: the primary dies under load, the sentinels promote its replica, and the
node follows them and keeps serving; every request it was sent is answered once, with its
result or an explicit error, never left hanging."""

import threading
import time

import redis

from tests.support.bundles import write_bundle, write_image
from tests.support.redis_servers import RedisServer

SERVICE = "aisrv"
CLIENT_TIMEOUT_S = 20  # well under request.timeout_s (60): a hang shows as a client time-out


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_node_follows_a_failover_under_load(tmp_path, start_node):
    primary = RedisServer(tmp_path, "primary", ["bind 127.0.0.1"])
    servers = [primary]
    try:
        servers.append(RedisServer(tmp_path, "replica", [
            "bind 127.0.0.1", f"replicaof 127.0.0.1 {primary.port}"]))
        for sentinel in range(3):
            servers.append(RedisServer(tmp_path, f"sentinel{sentinel}", [
                "bind 127.0.0.1", f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 4000"], sentinel=True))
        replica, sentinels = servers[1], servers[2:]
        for server in servers:
            server.wait(redis.Redis(port=server.port))
        asked = [redis.Redis(port=s.port, decode_responses=True) for s in sentinels]

        def settled():
            # Each sentinel knows the replica and the two other sentinels (for a quorum).
            return all(s.sentinel_master(SERVICE)["num-other-sentinels"] == 2
                       and s.sentinel_master(SERVICE)["num-slaves"] == 1 for s in asked)

        _until(settled, 30, "the sentinels to find the replica and each other")

        storage = tmp_path / "storage"
        write_bundle(storage, name="slow", delay=0.02)
        node = start_node(storage, env={
            "AISRV_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in sentinels),
            "AISRV_REDIS_SENTINEL_SERVICE": SERVICE, "AISRV_AUTOLOAD": "slow"})
        node.wait_switch()
        images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(8)]

        outcomes = []  # (started, image, status or exception)
        stop = threading.Event()

        def client(n):
            k = n
            while not stop.is_set():
                image = images[k % len(images)]
                k += 4
                started = time.monotonic()
                try:
                    answer = node.post("/api/v1alpha/detect", {"path": str(image)},
                                       timeout=CLIENT_TIMEOUT_S)
                except Exception as exc:  # a time-out: a request left hanging
                    outcomes.append((started, image, exc))
                    continue
                outcomes.append((started, image, answer))
                if answer.status_code != 200:
                    time.sleep(0.05)  # as a client honouring Retry-After would, briefly

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            _until(lambda: sum(1 for o in outcomes if getattr(o[2], "status_code", 0) == 200) >= 10,
                   30, "requests to be served before the failover")
            primary.kill()
            killed = time.monotonic()
            _until(lambda: int(asked[0].sentinel_get_master_addr_by_name(SERVICE)[1])
                   == replica.port, 30, "the sentinels to promote the replica")
            promoted = time.monotonic()
            _until(lambda: sum(1 for started, _, o in outcomes if started > promoted and
                               getattr(o, "status_code", 0) == 200) >= 10,
                   40, "requests to be served after the failover")
        finally:
            stop.set()
            for thread in threads:
                thread.join(CLIENT_TIMEOUT_S + 5)

        errors = 0
        for started, image, outcome in outcomes:
            assert not isinstance(outcome, Exception), f"a request got no answer: {outcome!r}"
            if outcome.status_code == 200:
                assert outcome.json()["result"]["path"] == str(image)  # its own result
            else:
                # An explicit error a client can act on, not a crash of the front.
                assert outcome.status_code == 503, outcome.text
                assert outcome.json()["message"], outcome.text
                errors += 1
        assert any(started > killed for started, _, _ in outcomes)
        assert node.proc.poll() is None, node.log()
        assert node.detect(images[0]).status_code == 200
        node.stop()  # while its redis still runs
        print(f"{len(outcomes)} requests, {errors} answered with an error during the failover")
    finally:
        for server in servers:
            server.kill()
