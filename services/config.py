"""Typed, read-only configuration built from YAML (or a dict), validated at load.

Every component declares one frozen dataclass; each field is documented where it is declared.
``load_config(Type, path)`` reads a YAML file and ``build_config(Type, data, source)`` a mapping;
both raise ``ConfigError`` whose message names the file and the field
(``gen.yaml: limits.max_n: expected an integer, got 'many'``).

A section given in the file is laid over the section's default (its ``default_factory``), so a
config whose section defaults differ from the section type's (``RunConfig.sft``: 2 epochs) keeps
them for the keys the file leaves out. Two class attributes of a config type (``ClassVar``) keep old
files working and say which fields a parent fills in:

- ``renamed_keys = {"old_key": "new.dotted.key"}``: an old key is moved to its new place with a
  ``ConfigDeprecationWarning`` naming both (``x.yaml: sft_epochs is deprecated, use sft.epochs``);
- ``filled_in = {"section": {"field": stand_in}}``: fields of a section that the config's user
  sets at run time (the run's seed, the addresses it starts); a file that sets one is an error,
  and the section is validated with the stand-ins in their place.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from services.errors import InvalidArgument

T = TypeVar("T")


class ConfigError(InvalidArgument):
    """A configuration that cannot be used; the message names the source and the field."""


class ConfigDeprecationWarning(FutureWarning):
    """An old configuration key that still works; the message names the key to use instead."""


def section_type(tp: Any) -> type | None:
    """The dataclass a field's type is (or is ``Optional`` of), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None


def _move_renamed_keys(cls: type, data: dict, source: str, prefix: str) -> dict:
    """``data`` with the old keys of ``cls`` (``cls.renamed_keys``) moved to their new place."""
    renamed = getattr(cls, "renamed_keys", None) or {}
    if not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        value = data.pop(old)
        warnings.warn(f"{source}: {prefix}{old} is deprecated, use {prefix}{new}", ConfigDeprecationWarning, 3)
        *parents, leaf = new.split(".")
        node, path = data, prefix
        for part in parents:
            path += part + "."
            child = node.get(part) or {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {path[:-1]}: expected a mapping, got {_describe(child)}")
            node[part] = node = dict(child)
        if leaf in node:
            raise ConfigError(f"{source}: {prefix}{old}: given twice, also as {prefix}{new} (keep only {new})")
        node[leaf] = value
    return data


def upgrade_keys(cls: type, data: Any, source: str = "config", prefix: str = "") -> Any:
    """``data`` (a mapping for ``cls``) with every deprecated key of ``cls`` and of its sections,
    at any depth, moved to its new place (a ``ConfigDeprecationWarning`` for each). ``build_config``
    does this itself; the CLI calls it to lay flags over an old file under the new names."""
    if not isinstance(data, dict):
        return data
    data = _move_renamed_keys(cls, data, source, prefix)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = section_type(hints[f.name])
        if sub is not None and isinstance(data.get(f.name), dict):
            data = {**data, f.name: upgrade_keys(sub, data[f.name], source, f"{prefix}{f.name}.")}
    return data


def _replace_path(obj: Any, changes: dict[str, Any]) -> Any:
    """``obj`` with ``{"section.field": value}`` changes made (at any depth)."""
    direct, nested = {}, {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    direct.update({head: _replace_path(getattr(obj, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(obj, **direct)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def keeps_renamed_keys(cls: type[T]) -> type[T]:
    """Class decorator (over ``@dataclass``): code written against the old flat fields keeps
    working. The constructor takes the old keys of ``cls.renamed_keys`` as keywords (laid into
    their section, over the section given or its default) and each old name reads its new field;
    both with a ``ConfigDeprecationWarning`` naming the new key."""
    renamed: dict[str, str] = cls.renamed_keys
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        old = {key: kwargs.pop(key) for key in list(kwargs) if key in renamed}
        if old:
            defaults = {f.name: f for f in dataclasses.fields(cls)}
            nested: dict[str, dict[str, Any]] = {}
            for key, value in old.items():
                warnings.warn(
                    f"{cls.__name__}({key}=...) is deprecated, use {renamed[key]}", ConfigDeprecationWarning, 2
                )
                head, _, rest = renamed[key].partition(".")
                nested.setdefault(head, {})[rest] = value
            for head, changes in nested.items():
                base = kwargs[head] if head in kwargs else _section_default(defaults[head])
                kwargs[head] = _replace_path(base, changes)
        init(self, *args, **kwargs)

    def old_name(key: str, new: str) -> property:
        def get(self):
            warnings.warn(f"{cls.__name__}.{key} is deprecated, use .{new}", ConfigDeprecationWarning, 2)
            return _get_path(self, new)

        return property(get, doc=f"Deprecated: ``{new}``.")

    cls.__init__ = functools.wraps(init)(__init__)
    for key, new in renamed.items():
        if not hasattr(cls, key):
            setattr(cls, key, old_name(key, new))
    return cls


def _section_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _convert(tp: Any, value: Any, field: str, source: str, check: bool = True, base: Any = None) -> Any:
    """``value`` as type ``tp``; a section (a mapping) is laid over ``base``, the field's default."""
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
                sub = base if dataclasses.is_dataclass(arg) and isinstance(base, arg) else None
                return _convert(arg, value, field, source, check, sub)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {field}: expected a mapping, got {_describe(value)}")
        return build_config(tp, value, source, prefix=field + ".", check=check, base=base)
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


def build_config(
    cls: type[T], data: dict, source: str = "config", prefix: str = "", check: bool = True, base: T | None = None
) -> T:
    """Builds ``cls`` from a mapping (over ``base``, else the defaults), checking field names and
    types and moving deprecated keys (``renamed_keys``); runs ``cls.validate`` (of every section
    too) unless ``check`` is False."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(data)}")
    data = _move_renamed_keys(cls, data, source, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})")
    filled = getattr(cls, "filled_in", None) or {}
    for name, section_fields in filled.items():
        given = sorted(set(data.get(name) or {}) & set(section_fields)) if isinstance(data.get(name), dict) else []
        if given:
            raise ConfigError(f"{source}: {prefix}{name}.{given[0]}: set by {cls.__name__} itself; leave it out")
    values = {
        name: _convert(
            hints[name],
            value,
            prefix + name,
            source,
            check and name not in filled,
            getattr(base, name) if base is not None else _section_default(fields[name]),
        )
        for name, value in data.items()
    }
    obj = dataclasses.replace(base, **values) if base is not None else cls(**values)
    if check:
        _check_filled_sections(obj, source, prefix)
        _check(obj, source, prefix)
    return obj


def _check(obj: Any, source: str, prefix: str) -> None:
    validate = getattr(obj, "validate", None)
    if validate is not None and (problem := validate()):
        raise ConfigError(f"{source}: {prefix}{problem[0]}: {problem[1]}")


def _check_filled_sections(obj: Any, source: str, prefix: str) -> None:
    """Validates the sections of ``obj`` whose ``filled_in`` fields it sets later, with the stand-ins."""
    for name, stand_ins in (getattr(obj, "filled_in", None) or {}).items():
        section = getattr(obj, name)
        if section is not None:
            validate_config(dataclasses.replace(section, **stand_ins), source, f"{prefix}{name}.")


def load_config(cls: type[T], path: str | Path, section: str | None = None, check: bool = True) -> T:
    """Reads a YAML file (optionally one top-level section of it) into ``cls``. Field names and
    types are always checked; ``check=False`` leaves the ``validate`` rules to a later
    ``validate_config`` (after command-line flags have filled in what the file leaves out)."""
    path = Path(path)
    data = read_config_data(path)
    if section is not None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = data.get(section) or {}
    return build_config(cls, data, str(path), prefix=f"{section}." if section else "", check=check)


def read_config_data(path: str | Path) -> Any:
    """The YAML data of a config file (``{}`` when empty); ConfigError naming the file (and line)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


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
    filled = getattr(obj, "filled_in", None) or {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.replace(value, **filled.get(f.name, {}))
            validate_config(value, source, prefix + f.name + ".")
    _check(obj, source, prefix)
