import pytest

from tests.support.node import NodeProcess


@pytest.fixture
def storage(tmp_path):
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def start_node():
    """Start nodes (`start_node(storage, args=..., env=...)`); all are stopped at teardown."""
    nodes = []

    def start(storage, **kwargs):
        node = NodeProcess(storage, **kwargs)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def redis_url(tmp_path):
    """A real redis: the embedded one the product starts, in a private folder."""
    from aiserving.broker.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "run").start()
    yield server.url
    server.stop()
