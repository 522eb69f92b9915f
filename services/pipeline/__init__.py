"""Pipelines that drive the services over gRPC: SL-CAI data, labeling, the main job."""
