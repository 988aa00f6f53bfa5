"""HTTP and gRPC fronts."""
