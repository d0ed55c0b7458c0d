"""Servicers: protobuf ⇄ domain, domain errors → gRPC status. Nothing else."""
