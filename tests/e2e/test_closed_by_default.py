"""Closed by default: loopback unless a door is opened on purpose, an embedded redis
that cannot be turned against the box, and a warning for every open door."""

import redis
import pytest

from tests.support.bundles import write_bundle, write_image
from tests.support.node import NodeProcess


def test_the_embedded_redis_refuses_what_could_harm_the_box(storage, start_node, tmp_path):
    node = start_node(storage)
    client = redis.Redis(port=node.redis_port, db=5)  # the legacy db 5 reader's door
    client.set("legacy-reader-check", "ok")
    assert client.get("legacy-reader-check") == b"ok"
    for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("SAVE",), ("BGSAVE",),
                    ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST"), ("SHUTDOWN",),
                    ("REPLICAOF", "127.0.0.1", "1"), ("FLUSHALL",)):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)
    assert node.get("/healthz").status_code == 200  # and it still runs


def test_redis_beyond_loopback_needs_a_password(storage):
    node = NodeProcess(storage, env={"AISRV_REDIS_BIND": "0.0.0.0"})
    with pytest.raises(RuntimeError, match="node exited with 2") as err:
        node.start()
    assert "'redis.password' is empty" in str(err.value)


def test_a_password_protects_the_embedded_redis(storage, tmp_path, start_node):
    write_bundle(storage, name="tiny", seed=1)
    node = start_node(storage, env={"AISRV_REDIS_PASSWORD": "s3cret pass/word"})
    node.switch(btype="pytorch", model="tiny")
    node.wait_switch()  # the node, its workers and the front all authenticate
    answer = node.detect(write_image(tmp_path / "a.png", seed=1))
    assert answer.status_code == 200
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=node.redis_port, db=5).get(answer.json()["uuid"])
    reader = redis.Redis(port=node.redis_port, db=5, password="s3cret pass/word")
    assert reader.get(answer.json()["uuid"]) is not None


def test_every_door_open_beyond_loopback_is_logged(storage, start_node):
    node = start_node(storage, env={"AISRV_HTTP_HOST": "0.0.0.0"})
    assert "REST listens on 0.0.0.0 (http.host), beyond loopback, without authentication" \
        in node.log()
    assert "gRPC listens" not in node.log()  # 127.0.0.1 in the tests
