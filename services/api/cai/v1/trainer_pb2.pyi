import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainerPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINER_PHASE_UNSPECIFIED: _ClassVar[TrainerPhase]
    TRAINER_PHASE_IDLE: _ClassVar[TrainerPhase]
    TRAINER_PHASE_SFT: _ClassVar[TrainerPhase]
    TRAINER_PHASE_REWARD_MODEL: _ClassVar[TrainerPhase]
    TRAINER_PHASE_POLICY: _ClassVar[TrainerPhase]
    TRAINER_PHASE_DONE: _ClassVar[TrainerPhase]
    TRAINER_PHASE_FAILED: _ClassVar[TrainerPhase]
TRAINER_PHASE_UNSPECIFIED: TrainerPhase
TRAINER_PHASE_IDLE: TrainerPhase
TRAINER_PHASE_SFT: TrainerPhase
TRAINER_PHASE_REWARD_MODEL: TrainerPhase
TRAINER_PHASE_POLICY: TrainerPhase
TRAINER_PHASE_DONE: TrainerPhase
TRAINER_PHASE_FAILED: TrainerPhase

class TrainerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("id", "path", "step", "created_at", "constitution_sha256", "kind")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONSTITUTION_SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    step: int
    created_at: _timestamp_pb2.Timestamp
    constitution_sha256: str
    kind: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., step: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., constitution_sha256: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("phase", "items_consumed", "items_dead_lettered", "step", "last_checkpoint", "metrics", "queue_url", "queue_lag", "error", "warning", "queue_connected", "queue_error", "promotions_pending", "constitution_sha256")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_URL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LAG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CONSTITUTION_SHA256_FIELD_NUMBER: _ClassVar[int]
    phase: TrainerPhase
    items_consumed: int
    items_dead_lettered: int
    step: int
    last_checkpoint: Checkpoint
    metrics: _containers.ScalarMap[str, float]
    queue_url: str
    queue_lag: int
    error: str
    warning: str
    queue_connected: bool
    queue_error: str
    promotions_pending: _containers.RepeatedScalarFieldContainer[str]
    constitution_sha256: str
    def __init__(self, phase: _Optional[_Union[TrainerPhase, str]] = ..., items_consumed: _Optional[int] = ..., items_dead_lettered: _Optional[int] = ..., step: _Optional[int] = ..., last_checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., queue_url: _Optional[str] = ..., queue_lag: _Optional[int] = ..., error: _Optional[str] = ..., warning: _Optional[str] = ..., queue_connected: _Optional[bool] = ..., queue_error: _Optional[str] = ..., promotions_pending: _Optional[_Iterable[str]] = ..., constitution_sha256: _Optional[str] = ...) -> None: ...
