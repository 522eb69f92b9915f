"""The generation service: samples answers from the current policy (``cai.v1.Generation``)."""
