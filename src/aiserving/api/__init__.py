"""The doors: legacy REST and the console (`rest/`), legacy gRPC and OIP gRPC (`grpc/`),
and what they share: `intake` (route, queue, wait), `oip_door`, `auth`, `tls`.

Each door maps errors once. May import node, inference's shared leaves, broker, jobs,
bundle, backends' registry, config; nothing but cli and appliance imports it.
"""
