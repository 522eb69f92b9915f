from services.api.cai.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JudgeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JUDGE_MODE_UNSPECIFIED: _ClassVar[JudgeMode]
    JUDGE_MODE_LOGPROB: _ClassVar[JudgeMode]
    JUDGE_MODE_CHAIN_OF_THOUGHT: _ClassVar[JudgeMode]
JUDGE_MODE_UNSPECIFIED: JudgeMode
JUDGE_MODE_LOGPROB: JudgeMode
JUDGE_MODE_CHAIN_OF_THOUGHT: JudgeMode

class Comparison(_message.Message):
    __slots__ = ("prompt", "answer_a", "answer_b", "principle_id", "id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_A_FIELD_NUMBER: _ClassVar[int]
    ANSWER_B_FIELD_NUMBER: _ClassVar[int]
    PRINCIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    prompt: _common_pb2.Conversation
    answer_a: str
    answer_b: str
    principle_id: str
    id: str
    def __init__(self, prompt: _Optional[_Union[_common_pb2.Conversation, _Mapping]] = ..., answer_a: _Optional[str] = ..., answer_b: _Optional[str] = ..., principle_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("comparisons", "mode", "swap_debias", "seed", "cot_sampling")
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SWAP_DEBIAS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    comparisons: _containers.RepeatedCompositeFieldContainer[Comparison]
    mode: JudgeMode
    swap_debias: bool
    seed: int
    cot_sampling: _common_pb2.SamplingParams
    def __init__(self, comparisons: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ..., mode: _Optional[_Union[JudgeMode, str]] = ..., swap_debias: _Optional[bool] = ..., seed: _Optional[int] = ..., cot_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class SoftLabel(_message.Message):
    __slots__ = ("p_a", "principle_id", "provenance", "reasoning", "logprob_a", "logprob_b", "comparison_id", "judge_config_sha256", "p_a_ab", "p_a_ba", "seed", "few_shot_ids")
    P_A_FIELD_NUMBER: _ClassVar[int]
    PRINCIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_A_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_B_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    JUDGE_CONFIG_SHA256_FIELD_NUMBER: _ClassVar[int]
    P_A_AB_FIELD_NUMBER: _ClassVar[int]
    P_A_BA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FEW_SHOT_IDS_FIELD_NUMBER: _ClassVar[int]
    p_a: float
    principle_id: str
    provenance: _common_pb2.Provenance
    reasoning: str
    logprob_a: float
    logprob_b: float
    comparison_id: str
    judge_config_sha256: str
    p_a_ab: float
    p_a_ba: float
    seed: int
    few_shot_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, p_a: _Optional[float] = ..., principle_id: _Optional[str] = ..., provenance: _Optional[_Union[_common_pb2.Provenance, _Mapping]] = ..., reasoning: _Optional[str] = ..., logprob_a: _Optional[float] = ..., logprob_b: _Optional[float] = ..., comparison_id: _Optional[str] = ..., judge_config_sha256: _Optional[str] = ..., p_a_ab: _Optional[float] = ..., p_a_ba: _Optional[float] = ..., seed: _Optional[int] = ..., few_shot_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[SoftLabel]
    def __init__(self, labels: _Optional[_Iterable[_Union[SoftLabel, _Mapping]]] = ...) -> None: ...
