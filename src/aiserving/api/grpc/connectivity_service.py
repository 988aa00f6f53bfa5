"""gRPC Connectivity service: the product version and the node's resources."""

from __future__ import annotations

from aiserving import __version__
from aiserving.api.grpc.protocol import connectivity_pb2, connectivity_pb2_grpc
from aiserving.node.resources import node_resources


class ConnectivityService(connectivity_pb2_grpc.ConnectivityServicer):
    def __init__(self, node):
        self.node = node

    def Ping(self, request, context):
        return connectivity_pb2.PingReply(version=__version__)

    def ListNodeResources(self, request, context):
        return connectivity_pb2.ResourcesReply(**node_resources(self.node.settings.storage))
