"""Many requests at once: batches form, and every caller gets its own result."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.bundles import checked_results, write_bundle, write_image


def test_fifty_concurrent_requests_get_their_own_results(storage, tmp_path, start_node):
    bundle = write_bundle(storage, name="tiny", seed=4)
    images = [write_image(tmp_path / f"img{n}.png", seed=100 + n) for n in range(50)]
    node = start_node(storage, args=["--profile"],
                      env={"AISRV_BATCH_SIZE": "8", "AISRV_BATCH_MAX_DELAY_MS": "20"})
    node.switch(btype="pytorch", model="tiny")
    node.wait_switch()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(node.detect, images))
    uuids = {body["uuid"] for body in checked_results(bundle, images, answers)}
    assert len(uuids) == 50
    def sizes():
        return [int(n) for n in re.findall(r"batch of (\d+)", node.log())]

    # A worker logs its batch line just after it answered: give the last one a moment.
    deadline = time.monotonic() + 10
    while sum(sizes()) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    sizes = sizes()
    assert sum(sizes) == 50  # every request went through exactly one logged batch
    assert max(sizes) > 1, "requests were never batched"
    assert max(sizes) <= 8
    assert "died" not in node.log() and "Traceback" not in node.log()  # no worker fell over
    assert re.search(r"queue wait avg [\d.]+ ms .* pre [\d.]+ ms \| infer [\d.]+ ms \| post", node.log())
