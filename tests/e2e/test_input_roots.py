"""/detect and InferenceLocal read only under the input roots, and say nothing about
files elsewhere: outside, missing and unreadable get one wording."""

import os

from tests.support.bundles import write_bundle, write_image
from tests.support.grpc_client import Client, inference_pb2


def test_only_files_under_the_roots_are_read(storage, tmp_path, start_node):
    write_bundle(storage, name="tiny", seed=1)
    inputs, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    inputs.mkdir()
    elsewhere.mkdir()
    good = write_image(inputs / "good.png", seed=1)
    outside = write_image(elsewhere / "secret.png", seed=2)
    (inputs / "escape.png").symlink_to(outside)  # a link leading out of the roots
    os.mkfifo(inputs / "pipe.png")
    node = start_node(storage, env={"AISRV_INPUT_ROOTS": str(inputs)})
    node.switch(btype="pytorch", model="tiny")
    node.wait_switch()
    assert node.detect(good).status_code == 200

    def message(path):
        answer = node.detect(path)
        assert answer.status_code == 400, answer.text
        return answer.json()["message"].replace(str(path), "<path>")

    same = {message(p) for p in (outside, inputs / "escape.png", inputs / "missing.png",
                                 "/etc/shadow", "/proc/1/environ", "/dev/zero")}
    assert same == {"no readable input file at <path> within the node's input roots "
                    "(setting input.roots)"}
    assert "not a regular file" in message(inputs / "pipe.png")  # inside: said plainly
    client = Client(node)
    try:
        refused = client.inference.InferenceLocal(inference_pb2.InferRequest(
            bid="0", uuid="r1", path="/etc/shadow"))
        assert refused.code == 110 and "no readable input file" in refused.msg
        assert client.results.get("r1") is None
    finally:
        client.close()
