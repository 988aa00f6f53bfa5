"""A gRPC client of the legacy API, made from the same .proto files a field client uses."""

from __future__ import annotations

import json
import time

import grpc
import redis

from aiserving.api.grpc.protocol import (backend_pb2, backend_pb2_grpc, common_pb2,
                                         connectivity_pb2_grpc, exchange_pb2, exchange_pb2_grpc,
                                         inference_pb2, inference_pb2_grpc, model_pb2,
                                         model_pb2_grpc)

CHUNK = 2 * 1024 * 1024


class Client:
    def __init__(self, node, channel=None):
        self.node = node
        self.channel = channel or grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}", options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024)])
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.backend = backend_pb2_grpc.BackendStub(self.channel)
        self.model = model_pb2_grpc.ModelStub(self.channel)
        self.exchange = exchange_pb2_grpc.ExchangeStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.connectivity = connectivity_pb2_grpc.ConnectivityStub(self.channel)
        # Legacy clients read results from redis db 5 at redis.host:redis.port.
        self.results = redis.Redis(host="127.0.0.1", port=node.redis_port, db=5)

    def close(self):
        self.channel.close()

    ping = staticmethod(lambda: common_pb2.PingRequest(client="tests"))

    def wait_running(self, bid: str, timeout: float = 90) -> dict:
        """Poll ListBackend until process "0" is running (4), as field clients do."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = json.loads(self.backend.ListBackend(backend_pb2.BackendInfo(bid=bid)).status)
            if status.get("0") == 4:
                return status
            if status.get("0") in (6, 7):
                raise AssertionError(f"backend {bid} failed: {status}")
            time.sleep(0.05)
        raise AssertionError(f"backend {bid} never ran: {status}")

    def wait_result(self, uuid: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.results.get(uuid)
            if raw is not None:
                return json.loads(raw)
            time.sleep(0.05)
        raise AssertionError(f"no result under {uuid} in redis db 5")

    def upload(self, data: bytes, chunk: int = CHUNK) -> list[str]:
        """UploadBin; returns the uuid of every answer."""
        def chunks():
            for index, start in enumerate(range(0, max(len(data), 1), chunk)):
                yield exchange_pb2.BinData(pack=exchange_pb2.Block(index=index,
                                                                   block=data[start:start + chunk]))
        return [answer.uuid for answer in self.exchange.UploadBin(chunks())]

    def download(self, name: str) -> tuple[bytes, list]:
        answers = list(self.exchange.DownloadBin(iter([exchange_pb2.BinData(uuid=name)])))
        return b"".join(a.pack.block for a in answers), answers


def model_info(record, **changes) -> "model_pb2.ModelInfo":
    data = {k: getattr(record, k) for k in ("name", "labels", "head", "bone", "impl", "implhash",
                                           "version", "threshold", "mapping", "modelext",
                                           "disthash")}
    data.update(changes)
    return model_pb2.ModelInfo(**data)


__all__ = ["Client", "model_info", "backend_pb2", "inference_pb2", "model_pb2", "exchange_pb2",
           "common_pb2"]
