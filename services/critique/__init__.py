"""The critique service: rounds of critique and revision under sampled principles (``cai.v1.Critique``)."""
