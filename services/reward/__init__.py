"""The reward service: scores answers with the trained reward model (``cai.v1.Reward``)."""
