"""The legacy gRPC API (proto package `trueno`)."""
