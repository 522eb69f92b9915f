"""Command-line flags generated from a config dataclass: one declaration per knob.

``add_config_flags(parser, LabelConfig)`` adds ``--field-name`` for every scalar field (str, int,
float, bool, or one of them or None), typed from its annotation, with the field's attribute
docstring and its default as help; ``config_overrides(args, LabelConfig)`` returns the fields whose
flags were given, to lay over the ``--config`` file (flags win). Flags default to None, so a field
the user did not type keeps the file's value. ``renames`` keeps the flag names users already type
as aliases (``--samples`` for ``samples_per_prompt``).

With ``nested=True`` the fields of the sections get flags too, named by their dotted path as in
the YAML file: ``--sft.learning-rate`` sets ``sft: {learning_rate: ...}`` and ``--rl.ppo.kl-coef``
sets ``rl: {ppo: {kl_coef: ...}}`` (the dot separates sections, the dashes words, so a flag never
means two fields). Fields a config fills in itself (``filled_in``) get no flag.
``load_with_flags(RunConfig, args, path)`` reads the file, moves its deprecated keys, lays the
given flags over it and builds the config once, so its rules see both.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

SCALARS = (str, int, float, bool)


@functools.cache
def field_docs(config_type: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: ``{field: "the string literal under it"}``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(config_type)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _scalar(tp: Any) -> type | None:
    """The flag type of a field type: a scalar, or the scalar of ``scalar | None``; else None."""
    if tp in SCALARS:
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in SCALARS:
            return args[0]
    return None


def config_fields(config_type: type, exclude: Iterable[str] = ()) -> list[tuple[dataclasses.Field, type]]:
    """The scalar fields of ``config_type`` (nested sections and ``exclude`` left out), with their types."""
    hints = typing.get_type_hints(config_type)
    skip = set(exclude)
    return [
        (f, _scalar(hints[f.name]))
        for f in dataclasses.fields(config_type)
        if f.name not in skip and _scalar(hints[f.name]) is not None
    ]


def flag_fields(
    config_type: type, exclude: Iterable[str] = (), nested: bool = False, defaults: Any = None, prefix: str = ""
) -> Iterator[tuple[str, type, Any, str]]:
    """``(dotted path, flag type, default, docstring)`` of every field that gets a flag: the scalar
    fields, and with ``nested`` those of the sections (less the ones ``filled_in`` names)."""
    from services.config import section_type

    skip = set(exclude)
    if defaults is None:
        defaults = config_type()
    docs = field_docs(config_type)
    hints = typing.get_type_hints(config_type)
    filled = getattr(config_type, "filled_in", None) or {}
    for f in dataclasses.fields(config_type):
        path = prefix + f.name
        if path in skip:
            continue
        kind = _scalar(hints[f.name])
        if kind is not None:
            yield path, kind, getattr(defaults, f.name), docs.get(f.name, "")
            continue
        sub = section_type(hints[f.name])
        value = getattr(defaults, f.name)
        if nested and sub is not None and value is not None:
            inner = skip | {f"{path}.{name}" for name in filled.get(f.name, ())}
            yield from flag_fields(sub, inner, True, value, path + ".")


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_type: type,
    *,
    exclude: Iterable[str] = (),
    renames: Mapping[str, str | Iterable[str]] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    nested: bool = False,
    defaults: Any = None,
) -> None:
    """One flag per scalar field of ``config_type`` (with ``nested``, of its sections too):
    ``--field-name`` / ``--section.field-name`` (and the old names in ``renames[path]``), of the
    field's type, help from its docstring and default; ``options[path]`` adds argparse keywords
    (a ``type`` that parses ``all``, a ``metavar``); ``defaults`` is the instance whose values the
    help shows (default: ``config_type()``)."""
    renames, choices, options = renames or {}, choices or {}, options or {}
    group = parser.add_argument_group(f"settings ({config_type.__name__}; flags win over --config)")
    for path, kind, default, doc in flag_fields(config_type, exclude, nested, defaults):
        old = renames.get(path, ())
        names = [_flag(path), *([old] if isinstance(old, str) else old)]
        help_text = f"{doc} (default: {default!r})".replace("%", "%%").strip()
        extra = {"choices": list(choices[path])} if path in choices else {"metavar": path.rpartition(".")[2].upper()}
        extra.update(options.get(path, {}))
        if kind is bool:
            group.add_argument(*names, dest=path, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        group.add_argument(*names, dest=path, type=extra.pop("type", kind), default=None, help=help_text, **extra)


def config_overrides(args: argparse.Namespace, config_type: type, exclude: Iterable[str] = ()) -> dict:
    """The fields of ``config_type`` whose flags were given (for ``replace_config``)."""
    values = {f.name: getattr(args, f.name, None) for f, _ in config_fields(config_type, exclude)}
    return {k: v for k, v in values.items() if v is not None}


def flag_tree(args: argparse.Namespace, config_type: type, exclude: Iterable[str] = (), nested: bool = True) -> dict:
    """The given flags as the mapping a config file would hold: ``{"sft": {"epochs": 3.0}}``."""
    tree: dict = {}
    for path, *_ in flag_fields(config_type, exclude, nested):
        value = getattr(args, path, None)
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, section by section."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_with_flags(
    config_type: type, args: argparse.Namespace, path: str | Path | None, *, exclude: Iterable[str] = (), **fields
):
    """``config_type`` from the ``--config`` file at ``path`` (its deprecated keys moved), with the
    given flags and then ``fields`` (values of flags the command parses itself; None ones are
    left out) laid over it, built and checked once; ConfigError names the file and the field."""
    from services.config import ConfigError, build_config, read_config_data, upgrade_keys

    data = read_config_data(path) if path else {}
    source = str(path) if path else "command line"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    data = upgrade_keys(config_type, data, source)
    data = _merge(data, flag_tree(args, config_type, exclude))
    data = _merge(data, {k: v for k, v in fields.items() if v is not None})
    return build_config(config_type, data, source)
