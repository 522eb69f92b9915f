from services.api.cai.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReviseItem(_message.Message):
    __slots__ = ("prompt", "answer")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    prompt: _common_pb2.Conversation
    answer: str
    def __init__(self, prompt: _Optional[_Union[_common_pb2.Conversation, _Mapping]] = ..., answer: _Optional[str] = ...) -> None: ...

class ReviseRequest(_message.Message):
    __slots__ = ("items", "rounds", "sampling", "seed", "principle_ids", "critique_max_tokens")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRINCIPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    CRITIQUE_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviseItem]
    rounds: int
    sampling: _common_pb2.SamplingParams
    seed: int
    principle_ids: _containers.RepeatedScalarFieldContainer[str]
    critique_max_tokens: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviseItem, _Mapping]]] = ..., rounds: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., principle_ids: _Optional[_Iterable[str]] = ..., critique_max_tokens: _Optional[int] = ...) -> None: ...

class CritiqueRound(_message.Message):
    __slots__ = ("round", "principle_id", "critique", "revision", "kept_previous", "truncated")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PRINCIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    CRITIQUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEPT_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    round: int
    principle_id: str
    critique: str
    revision: str
    kept_previous: bool
    truncated: bool
    def __init__(self, round: _Optional[int] = ..., principle_id: _Optional[str] = ..., critique: _Optional[str] = ..., revision: _Optional[str] = ..., kept_previous: _Optional[bool] = ..., truncated: _Optional[bool] = ...) -> None: ...

class RevisionChain(_message.Message):
    __slots__ = ("rounds", "final_answer", "provenance")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[CritiqueRound]
    final_answer: str
    provenance: _common_pb2.Provenance
    def __init__(self, rounds: _Optional[_Iterable[_Union[CritiqueRound, _Mapping]]] = ..., final_answer: _Optional[str] = ..., provenance: _Optional[_Union[_common_pb2.Provenance, _Mapping]] = ...) -> None: ...

class ReviseResponse(_message.Message):
    __slots__ = ("chains",)
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    chains: _containers.RepeatedCompositeFieldContainer[RevisionChain]
    def __init__(self, chains: _Optional[_Iterable[_Union[RevisionChain, _Mapping]]] = ...) -> None: ...
