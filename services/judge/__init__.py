"""The judge service: soft preference labels under sampled principles (``cai.v1.Judge``)."""
