"""Command-line flags generated from a config dataclass: one declaration per knob.

``add_config_flags(parser, LabelConfig)`` adds ``--field-name`` for every scalar field (str, int,
float, bool), typed from its annotation, with the field's attribute docstring and its default as
help; ``config_overrides(args, LabelConfig)`` returns the fields whose flags were given, to lay over
the ``--config`` file (flags win). Flags default to None, so a field the user did not type keeps the
file's value. ``renames`` keeps the flag names users already type as aliases (``--samples`` for
``samples_per_prompt``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from collections.abc import Iterable, Mapping

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


def config_fields(config_type: type, exclude: Iterable[str] = ()) -> list[tuple[dataclasses.Field, type]]:
    """The scalar fields of ``config_type`` (nested sections and ``exclude`` left out), with their types."""
    hints = typing.get_type_hints(config_type)
    skip = set(exclude)
    return [
        (f, hints[f.name]) for f in dataclasses.fields(config_type) if f.name not in skip and hints[f.name] in SCALARS
    ]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_type: type,
    *,
    exclude: Iterable[str] = (),
    renames: Mapping[str, str | Iterable[str]] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """One flag per scalar field of ``config_type``: ``--field-name`` (and the old names in
    ``renames[field]``), of the field's type, help from its docstring and default."""
    renames, choices = renames or {}, choices or {}
    docs = field_docs(config_type)
    for f, kind in config_fields(config_type, exclude):
        old = renames.get(f.name, ())
        names = [_flag(f.name), *([old] if isinstance(old, str) else old)]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%").strip()
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        extra = {"choices": list(choices[f.name])} if f.name in choices else {}
        parser.add_argument(*names, dest=f.name, type=kind, default=None, help=help_text, **extra)


def config_overrides(args: argparse.Namespace, config_type: type, exclude: Iterable[str] = ()) -> dict:
    """The fields of ``config_type`` whose flags were given (for ``replace_config``)."""
    values = {f.name: getattr(args, f.name, None) for f, _ in config_fields(config_type, exclude)}
    return {k: v for k, v in values.items() if v is not None}
