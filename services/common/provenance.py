"""Provenance records: where a revision or a label came from."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from services.api.cai.v1 import common_pb2
from services.constitution import Constitution


def provenance(
    constitution: Constitution, principle_id: str, model: str, checkpoint: str, prompt_id: str = ""
) -> common_pb2.Provenance:
    created = Timestamp()
    created.GetCurrentTime()
    return common_pb2.Provenance(
        constitution_file=constitution.file_name,
        constitution_sha256=constitution.sha256,
        principle_id=principle_id,
        model=model,
        checkpoint=checkpoint,
        prompt_id=prompt_id,
        created_at=created,
    )
