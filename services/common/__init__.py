"""Code shared by every service: the gRPC server runner, metrics, request validation."""
