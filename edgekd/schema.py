"""Typed, strict YAML loading shared by model.yaml and target profiles.

Config is data: `yaml.safe_load` into pydantic models that forbid unknown keys.
Pydantic's errors are rewritten into one paragraph that names the key path,
what was wrong, and (for a misspelt key) the nearest valid name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """Parse a YAML mapping, turning every failure into a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"The {what} file {str(path)!r} does not exist.",
            "Check the path, or run `edgekd init` to write a commented template.",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}.",
            "Fix the indentation or quoting there (tabs are not allowed in YAML).",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must be a mapping of keys to values, got a {type(data).__name__}.",
            "Start from `edgekd init`'s template.",
        )
    return data


def parse(model: type[M], data: Any, source: str) -> M:
    """Validate `data` into `model`; raise one ConfigError listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, err) for err in exc.errors()]
        raise ConfigError(
            f"{source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
            + "; ".join(problems)
            + "."
        ) from None


def _describe(model: type[BaseModel], err: dict) -> str:
    path, valid = _walk(model, err["loc"])
    loc = ".".join(path)
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {loc!r}{hint}; valid keys here: {', '.join(sorted(valid))}"
    if err["type"] == "union_tag_invalid":  # a discriminated union (e.g. a loss `kind`)
        tag, expected = err["ctx"]["tag"], [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
        close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{loc + '.kind'!r}: unknown kind {tag!r}{hint}; valid kinds: {', '.join(expected)}"
    if err["type"] == "missing":
        return f"{loc!r} is required"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"{loc!r}: {err['msg'].rstrip('.')} (got {shown})"


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], list[str]]:
    """Follow `loc` through nested models. Returns the path as the user wrote it
    (pydantic adds a union member's tag, which the YAML has no key for) and the
    keys valid where its last part sits."""
    current: Any = model  # an annotation: a model, `X | None`, `list[X]`, a tagged union
    path: list[str] = []
    parent: list[str] = []
    for part in loc:
        if isinstance(part, int):
            path.append(str(part))
            continue
        members = _models_in(current)
        owner = next((m for m in members if part in m.model_fields), None)
        tagged = next((m for m in members if _tag(m) == part), None)
        if owner is not None:
            parent = list(owner.model_fields)
            path.append(part)
            current = owner.model_fields[part].annotation
        elif tagged is not None:
            current = tagged
        else:
            parent = list(members[0].model_fields) if len(members) == 1 else []
            path.append(str(part))
            current = None
    return path, parent


def _tag(member: type[BaseModel]) -> Any:
    kind = member.model_fields.get("kind")
    return kind.default if kind is not None else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModels inside `X`, `X | None`, `list[X]`, `dict[str, X]` or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += [m for m in _models_in(arg) if m not in found]
    return found
