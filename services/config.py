"""Typed, read-only configuration built from YAML (or a dict), validated at load.

Every component declares one frozen dataclass; each field is documented where it is declared.
``load_config(Type, path)`` reads a YAML file and ``build_config(Type, data, source)`` a mapping;
both raise ``ConfigError`` whose message names the file and the field
(``gen.yaml: limits.max_n: expected an integer, got 'many'``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from services.errors import InvalidArgument

T = TypeVar("T")


class ConfigError(InvalidArgument):
    """A configuration that cannot be used; the message names the source and the field."""


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _convert(tp: Any, value: Any, field: str, source: str, check: bool = True) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, field, source, check)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {field}: expected a mapping, got {_describe(value)}")
        return build_config(tp, value, source, prefix=field + ".", check=check)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {field}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{field}[{i}]", source, check) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {field}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {field}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {field}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {field}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {field}: expected text, got {_describe(value)}")
        return value
    return value


def build_config(cls: type[T], data: dict, source: str = "config", prefix: str = "", check: bool = True) -> T:
    """Builds ``cls`` from a mapping, checking field names and types; runs ``cls.validate`` (of
    every section too) unless ``check`` is False."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})")
    values = {name: _convert(hints[name], value, prefix + name, source, check) for name, value in data.items()}
    obj = cls(**values)
    if not check:
        return obj
    validate = getattr(obj, "validate", None)
    if validate is not None:
        problem = validate()
        if problem:
            field, message = problem
            raise ConfigError(f"{source}: {prefix}{field}: {message}")
    return obj


def load_config(cls: type[T], path: str | Path, section: str | None = None, check: bool = True) -> T:
    """Reads a YAML file (optionally one top-level section of it) into ``cls``. Field names and
    types are always checked; ``check=False`` leaves the ``validate`` rules to a later
    ``validate_config`` (after command-line flags have filled in what the file leaves out)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if section is not None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = data.get(section) or {}
    return build_config(cls, data, str(path), prefix=f"{section}." if section else "", check=check)


def replace_config(obj: T, **changes: Any) -> T:
    """A copy of a config with some fields changed (None values are ignored), validated again."""
    changes = {k: v for k, v in changes.items() if v is not None}
    new = dataclasses.replace(obj, **changes)
    validate = getattr(new, "validate", None)
    if validate is not None and (problem := validate()):
        raise ConfigError(f"{type(obj).__name__}: {problem[0]}: {problem[1]}")
    return new


def validate_config(obj: Any, source: str = "config", prefix: str = "") -> None:
    """Runs ``validate`` of every section of a built config (innermost first), then of ``obj``;
    raises ``ConfigError`` naming the source and the field. For configs built with
    ``check=False`` and then changed (``cai serve`` lays its flags over the file first)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, source, prefix + f.name + ".")
    validate = getattr(obj, "validate", None)
    if validate is not None and (problem := validate()):
        raise ConfigError(f"{source}: {prefix}{problem[0]}: {problem[1]}")
