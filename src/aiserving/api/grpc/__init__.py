"""The gRPC doors: the legacy API (proto package `trueno`) and OIP v2's
GRPCInferenceService: protos, generated/ (made by scripts/gen_protos.py), one servicer
per service, `mapping` (errors to answers, once) and `uploads` (chunked bundle uploads).
"""
