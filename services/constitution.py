"""Constitutions: principles as data files (YAML), loaded, validated and hashed.

The format is documented in ``constitutions/README.md``. ``load_constitution(path)`` returns a
read-only ``Constitution``; a bad file raises ``ConstitutionError`` whose message lists every
problem as ``FILE:LINE: FIELD: what is wrong``. The SHA-256 of the file's bytes is recorded in the
provenance of everything a principle produces.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.errors import InvalidArgument
from services.paths import data_dir

FORMAT = "cai-constitution/v1"
DEFAULT_CONSTITUTION = data_dir("constitutions") / "default.yaml"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ROLES = ("system", "user", "assistant")


class ConstitutionError(InvalidArgument):
    """A constitution file that cannot be used; ``problems`` are ``FILE:LINE: FIELD: reason``."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class CritiquePrinciple:
    """A critique request and the matching revision request."""

    id: str
    critique: str
    revision: str
    topic: str = ""


@dataclass(frozen=True)
class JudgingPrinciple:
    """A multiple-choice question asking which of two answers (A) or (B) is better."""

    id: str
    question: str
    topic: str = ""


@dataclass(frozen=True)
class CritiqueExample:
    """A worked critique/revision example shown few-shot."""

    id: str
    conversation: tuple[dict, ...]
    answer: str
    critique: str
    revision: str


@dataclass(frozen=True)
class JudgingExample:
    """A worked comparison shown few-shot."""

    id: str
    conversation: tuple[dict, ...]
    answer_a: str
    answer_b: str
    preferred: str
    reasoning: str = ""


@dataclass(frozen=True)
class Constitution:
    name: str
    path: str
    sha256: str
    critique_revision: tuple[CritiquePrinciple, ...]
    judging: tuple[JudgingPrinciple, ...]
    critique_examples: tuple[CritiqueExample, ...] = ()
    judging_examples: tuple[JudgingExample, ...] = ()
    description: str = ""

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    def critique_principle(self, principle_id: str) -> CritiquePrinciple:
        for p in self.critique_revision:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def judging_principle(self, principle_id: str) -> JudgingPrinciple:
        for p in self.judging:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample_critique(self, rng: random.Random, among: Sequence[str] = ()) -> CritiquePrinciple:
        """One critique/revision principle, uniformly (optionally among the given ids)."""
        pool = [p for p in self.critique_revision if not among or p.id in among]
        return rng.choice(pool)

    def sample_judging(self, rng: random.Random) -> JudgingPrinciple:
        """One judging principle, uniformly."""
        return rng.choice(self.judging)


class _Reader:
    """Turns a composed YAML node tree into Python values, remembering each field's line."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[str] = []

    def problem(self, node, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.file}:{line}: {field}: {message}")

    def mapping(self, node, field: str) -> dict | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, field, "must be a mapping of keys to values")
            return None
        out = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            if name in out:
                self.problem(key, f"{field}.{name}" if field else name, "appears twice")
            out[name] = value
        return out

    def sequence(self, node, field: str) -> list:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, field, "must be a list")
            return []
        return list(node.value)

    def text(self, fields: dict, key: str, parent, prefix: str, required: bool = True) -> str:
        field = f"{prefix}.{key}" if prefix else key
        node = fields.get(key)
        if node is None:
            if required:
                self.problem(parent, field, "is required")
            return ""
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(("null", "bool")):
            self.problem(node, field, "must be text")
            return ""
        value = str(node.value).strip()
        if required and not value:
            self.problem(node, field, "must not be empty")
        return value

    def unknown(self, fields: dict, allowed: Sequence[str], prefix: str) -> None:
        for key, node in fields.items():
            if key not in allowed:
                field = f"{prefix}.{key}" if prefix else key
                self.problem(node, field, f"unknown field (allowed: {', '.join(allowed)})")

    def conversation(self, fields: dict, parent, prefix: str) -> tuple[dict, ...]:
        field = f"{prefix}.conversation"
        node = fields.get("conversation")
        if node is None:
            self.problem(parent, field, "is required")
            return ()
        messages = []
        for i, item in enumerate(self.sequence(node, field)):
            sub = f"{field}[{i}]"
            m = self.mapping(item, sub)
            if m is None:
                continue
            self.unknown(m, ("role", "content"), sub)
            role = self.text(m, "role", item, sub)
            content = self.text(m, "content", item, sub)
            if role and role not in _ROLES:
                self.problem(m["role"], f"{sub}.role", f"must be one of {', '.join(_ROLES)}")
            messages.append({"role": role, "content": content})
        if not messages:
            self.problem(node, field, "must hold at least one message")
        elif messages[-1]["role"] != "user":
            self.problem(node, field, "must end with a user message")
        return tuple(messages)


def _read_entries(reader: _Reader, top: dict, key: str, root, required: bool) -> list[tuple]:
    node = top.get(key)
    if node is None:
        if required:
            reader.problem(root, key, "is required")
        return []
    entries = []
    for i, item in enumerate(reader.sequence(node, key)):
        fields = reader.mapping(item, f"{key}[{i}]")
        if fields is not None:
            entries.append((f"{key}[{i}]", item, fields))
    if required and not entries:
        reader.problem(node, key, "must hold at least one entry")
    return entries


def parse_constitution(text: str, file: str, sha256: str = "") -> Constitution:
    """Parses and validates constitution YAML text; ``file`` is used in error messages."""
    reader = _Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConstitutionError([f"{file}:{line}: (yaml): {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise ConstitutionError([f"{file}:1: (file): is empty"])
    top = reader.mapping(root, "")
    if top is None:
        raise ConstitutionError(reader.problems)
    reader.unknown(top, ("format", "name", "description", "critique_revision", "judging", "few_shot"), "")
    fmt = reader.text(top, "format", root, "")
    if fmt and fmt != FORMAT:
        reader.problem(top["format"], "format", f"must be {FORMAT!r}, got {fmt!r}")
    name = reader.text(top, "name", root, "")
    description = reader.text(top, "description", root, "", required=False)
    seen: dict[str, str] = {}

    def check_id(fields: dict, item, prefix: str) -> str:
        value = reader.text(fields, "id", item, prefix)
        if value and not _ID.match(value):
            reader.problem(fields["id"], f"{prefix}.id", "must be lowercase letters, digits, '.', '-' or '_'")
        elif value in seen:
            reader.problem(fields["id"], f"{prefix}.id", f"{value!r} is already used by {seen[value]}")
        elif value:
            seen[value] = prefix
        return value

    critique = []
    for prefix, item, f in _read_entries(reader, top, "critique_revision", root, True):
        reader.unknown(f, ("id", "topic", "critique", "revision"), prefix)
        critique.append(
            CritiquePrinciple(
                id=check_id(f, item, prefix),
                critique=reader.text(f, "critique", item, prefix),
                revision=reader.text(f, "revision", item, prefix),
                topic=reader.text(f, "topic", item, prefix, required=False),
            )
        )
    judging = []
    for prefix, item, f in _read_entries(reader, top, "judging", root, True):
        reader.unknown(f, ("id", "topic", "question"), prefix)
        judging.append(
            JudgingPrinciple(
                id=check_id(f, item, prefix),
                question=reader.text(f, "question", item, prefix),
                topic=reader.text(f, "topic", item, prefix, required=False),
            )
        )
    critique_examples, judging_examples = [], []
    few = top.get("few_shot")
    if few is not None:
        few_fields = reader.mapping(few, "few_shot") or {}
        reader.unknown(few_fields, ("critique_revision", "judging"), "few_shot")
        for prefix, item, f in _read_entries(reader, few_fields, "critique_revision", few, False):
            prefix = "few_shot." + prefix
            reader.unknown(f, ("id", "conversation", "answer", "critique", "revision"), prefix)
            critique_examples.append(
                CritiqueExample(
                    id=check_id(f, item, prefix),
                    conversation=reader.conversation(f, item, prefix),
                    answer=reader.text(f, "answer", item, prefix),
                    critique=reader.text(f, "critique", item, prefix),
                    revision=reader.text(f, "revision", item, prefix),
                )
            )
        for prefix, item, f in _read_entries(reader, few_fields, "judging", few, False):
            prefix = "few_shot." + prefix
            reader.unknown(f, ("id", "conversation", "answer_a", "answer_b", "preferred", "reasoning"), prefix)
            preferred = reader.text(f, "preferred", item, prefix).upper()
            if preferred and preferred not in ("A", "B"):
                reader.problem(f["preferred"], f"{prefix}.preferred", "must be A or B")
            judging_examples.append(
                JudgingExample(
                    id=check_id(f, item, prefix),
                    conversation=reader.conversation(f, item, prefix),
                    answer_a=reader.text(f, "answer_a", item, prefix),
                    answer_b=reader.text(f, "answer_b", item, prefix),
                    preferred=preferred,
                    reasoning=reader.text(f, "reasoning", item, prefix, required=False),
                )
            )
    if reader.problems:
        raise ConstitutionError(reader.problems)
    return Constitution(
        name=name,
        path=file,
        sha256=sha256 or hashlib.sha256(text.encode()).hexdigest(),
        critique_revision=tuple(critique),
        judging=tuple(judging),
        critique_examples=tuple(critique_examples),
        judging_examples=tuple(judging_examples),
        description=description,
    )


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Loads and validates a constitution file (the shipped default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_CONSTITUTION
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConstitutionError([f"{path}:1: (file): cannot read: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConstitutionError([f"{path}:1: (file): not UTF-8 text ({exc.reason})"]) from None
    return parse_constitution(text, str(path), hashlib.sha256(data).hexdigest())
