"""Typed, strict YAML loading shared by model.yaml and target profiles.

Config is data: YAML's safe loader into pydantic models that forbid unknown keys.
Pydantic's errors are rewritten into one paragraph that names the key path,
what was wrong, and (for a misspelt key) the nearest valid name.

Input is bounded before it is built (docs/security.md): the file's size, and the
size and depth of the document with every alias expanded, counted on the composed
node graph, where an alias is still one shared node. A 300-byte "billion laughs"
file is refused in milliseconds instead of expanding to gigabytes, and messages
show values through a short repr, never an expanded one.
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


MAX_YAML_BYTES = 256 * 1024  # model.yaml with every key commented is ~7 KB
MAX_YAML_NODES = 10_000  # scalars + mappings + sequences, aliases expanded; the full template has ~200
MAX_YAML_DEPTH = 50

def short_repr(value: Any) -> str:
    """A repr for messages: a few elements, cut strings; never the whole of a large value."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxstring, short.maxother = 2, 60, 60
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = 4
    return short.repr(value)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """Parse a YAML mapping, turning every failure into a ConfigError."""
    path = Path(path)
    start_over = ("run `edgekd init` to write a commented template" if what == "config"
                  else "see the shipped files (targets/, calib/) for the layout")
    if not path.is_file():
        raise ConfigError(f"The {what} file {str(path)!r} does not exist.", f"Check the path, or {start_over}.")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"The {what} file {path} is {size / 1024:.0f} KiB; edgekd reads at most "
                          f"{MAX_YAML_BYTES // 1024} KiB.", f"Is it the right file? If so, {start_over}.")
    data = _load_bounded(path, what)
    if data is None:
        raise ConfigError(f"The {what} file {path} is empty (or only comments).",
                          f"Give at least one key; or {start_over}"
                          + (" (edgekd init --force overwrites the file)." if what == "config" else "."))
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must be a mapping of keys to values, got a {type(data).__name__}.",
            f"Start over: {start_over}.",
        )
    return data


def _load_bounded(path: Path, what: str) -> Any:
    """yaml.safe_load, but the composed graph is measured before any Python object is built."""
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"The {what} file {path} is not UTF-8 text.", "Is it the right file?") from None
    try:
        node = loader.get_single_node()  # aliases are shared nodes here: nothing is expanded yet
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
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
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path} nests collections too deeply (more than {MAX_YAML_DEPTH} levels).",
                          "A config is a few levels deep: is it the right file?") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose alias-expanded size or depth is out of bounds, or that refers to itself.

    Iterative post-order walk; an alias reuses its anchor's node, so each node's expanded
    size and height are computed once (memoised by identity) however often it is referenced.
    """
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            below = [done[id(child)] for child in _children(node)]
            size, height = 1 + sum(b[0] for b in below), 1 + max((b[1] for b in below), default=0)
            if size > MAX_YAML_NODES:
                raise ConfigError(f"{path} expands to more than {MAX_YAML_NODES:,} values once its aliases (*name) "
                                  "are resolved.", "Use fewer nested aliases; a config needs a few hundred values.")
            if height > MAX_YAML_DEPTH:
                raise ConfigError(f"{path} nests collections too deeply (more than {MAX_YAML_DEPTH} levels).",
                                  "A config is a few levels deep: is it the right file?")
            done[key] = (size, height)
            continue
        if key in done:
            continue
        if key in open_nodes:
            raise ConfigError(f"{path} has an alias that refers to itself (line {node.start_mark.line + 1}).",
                              "Remove the recursive alias.")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in done)


MAX_PROBLEMS = 10  # listed in one message; the count says how many there are


def parse(model: type[M], data: Any, source: str) -> M:
    """Validate `data` into `model`; raise one ConfigError listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, err) for err in exc.errors()]
        shown = problems[:MAX_PROBLEMS] + ([f"and {len(problems) - MAX_PROBLEMS} more"]
                                           if len(problems) > MAX_PROBLEMS else [])
        raise ConfigError(
            f"{source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
            + "; ".join(shown)
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
    shown = short_repr(got) if not isinstance(got, dict) else "a mapping"
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
