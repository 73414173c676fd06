"""Template references in task `args` and `map.over`: finding them and resolving them.

A reference is `{{ params.x.y }}`, `{{ tasks.a.output.key.0 }}` or `{{ item.key }}`. Integer path
segments index lists. Validation uses `references` to check a DAG before it runs; the engine
uses `resolve` to build an attempt's concrete arguments from params and upstream outputs.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Non-greedy so two references in one string stay two; DOTALL so a newline inside the braces
# is reported as a malformed reference instead of being silently left alone.
_REF_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INDEX_RE = re.compile(r"^[0-9]+$")
_MAX_KEYS_SHOWN = 20


class RefError(ValueError):
    """A reference is malformed, or names something that does not exist."""


class _Missing:
    """The type of `MISSING`: there is no current map item."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Ref:
    """One parsed reference. `path` is the key/index path below the root, as strings.

    `task` is set only for `kind == "tasks"`; its path starts below `output`. `text` is the
    normalised form (`{{ tasks.a.output.rows }}`) used in messages, whatever the spacing was.
    """

    kind: Literal["params", "tasks", "item"]
    task: str | None
    path: tuple[str, ...]
    text: str


@functools.lru_cache(maxsize=4096)
def _parse_inner(raw: str) -> Ref:
    """Parse the text between `{{` and `}}` (`raw` is the whole `{{ ... }}` for messages)."""
    inner = raw[2:-2].strip()
    if not inner:
        raise RefError(f"{raw}: empty reference; write e.g. '{{{{ params.x }}}}'")
    segments = inner.split(".")
    for seg in segments:
        if not _SEGMENT_RE.match(seg):
            raise RefError(
                f"{raw}: bad path segment {seg!r}; a reference is names and list indexes "
                "joined by '.', like 'tasks.a.output.rows.0'"
            )
    text = "{{ " + inner + " }}"
    root, rest = segments[0], tuple(segments[1:])
    if root == "params":
        if not rest:
            raise RefError(f"{raw}: name a parameter, like '{{{{ params.x }}}}'")
        return Ref("params", None, rest, text)
    if root == "item":
        return Ref("item", None, rest, text)
    if root == "tasks":
        if len(rest) < 2:
            name = rest[0] if rest else "<name>"
            raise RefError(f"{raw}: write '{{{{ tasks.{name}.output }}}}' to use a task's output")
        if rest[1] != "output":
            why = (
                "a task's status can only be tested in `when`"
                if rest[1] == "status"
                else f"unknown field {rest[1]!r}"
            )
            raise RefError(f"{raw}: {why}; arguments may reference only 'tasks.{rest[0]}.output'")
        return Ref("tasks", rest[0], rest[2:], text)
    raise RefError(f"{raw}: unknown name {root!r}; a reference starts with params., tasks. or item")


def _check_unclosed(text: str) -> None:
    if "{{" in _REF_RE.sub("", text):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise RefError(f"unclosed '{{{{' in {shown!r}; close it with '}}}}'")


def single(text: str) -> Ref | None:
    """The reference if `text` is exactly one reference (surrounding whitespace ignored), else None.

    Raises RefError if that one reference is malformed.
    """
    stripped = text.strip()
    match = _REF_RE.fullmatch(stripped)
    # `{{ a }} {{ b }}` also fullmatches the non-greedy pattern: braces inside mean text + refs.
    if match is None or "{{" in match.group(1) or "}}" in match.group(1):
        return None
    return _parse_inner(stripped)


def _in_string(text: str) -> list[Ref]:
    if "{{" not in text:
        return []
    _check_unclosed(text)
    return [_parse_inner(m.group(0)) for m in _REF_RE.finditer(text)]


def references(value: Any) -> list[Ref]:
    """Every reference in a value: strings, and the items of nested lists and mapping values.

    Mapping keys are never references. Raises RefError on the first malformed reference.
    """
    found: list[Ref] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            found.extend(_in_string(v))
        elif isinstance(v, Mapping):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
    return found


def _keys_hint(container: Mapping[Any, Any]) -> str:
    if not container:
        return "it is empty"
    keys = sorted(str(k) for k in container)
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = f", ... ({len(keys)} keys)" if len(keys) > _MAX_KEYS_SHOWN else ""
    return f"keys: {shown}{more}"


def _lookup(ref: Ref, params: Mapping[str, Any], outputs: Mapping[str, Any], item: Any) -> Any:
    if ref.kind == "params":
        current: Any = params
        label = "params"
    elif ref.kind == "tasks":
        assert ref.task is not None
        if ref.task not in outputs:
            raise RefError(f"{ref.text}: task {ref.task!r} has no output (it has not succeeded)")
        current = outputs[ref.task]
        label = f"task {ref.task!r} output"
    else:
        if item is MISSING:
            raise RefError(f"{ref.text}: there is no current item; only a task with `map` has one")
        current = item
        label = "item"
    for seg in ref.path:
        if isinstance(current, Mapping):
            if seg not in current:
                raise RefError(f"{ref.text}: {label} has no key {seg!r} ({_keys_hint(current)})")
            current = current[seg]
        elif isinstance(current, (list, tuple)):
            if not _INDEX_RE.match(seg):
                raise RefError(f"{ref.text}: {label} is a list; {seg!r} is not a list index")
            if int(seg) >= len(current):
                raise RefError(
                    f"{ref.text}: {label} has no index {seg} (it has {len(current)} items)"
                )
            current = current[int(seg)]
        else:
            kind = "null" if current is None else type(current).__name__
            raise RefError(f"{ref.text}: {label} is a {kind} value, it has no key {seg!r}")
        label = f"{label}.{seg}"
    return current


def _render(ref: Ref, value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RefError(f"{ref.text}: the value cannot be written as JSON ({exc})") from None


def _resolve_str(
    text: str, params: Mapping[str, Any], outputs: Mapping[str, Any], item: Any
) -> Any:
    if "{{" not in text:
        return text
    whole = single(text)
    if whole is not None:
        return _lookup(whole, params, outputs, item)
    _check_unclosed(text)

    def substitute(match: re.Match[str]) -> str:
        ref = _parse_inner(match.group(0))
        return _render(ref, _lookup(ref, params, outputs, item))

    return _REF_RE.sub(substitute, text)


def resolve(
    value: Any,
    *,
    params: Mapping[str, Any],
    outputs: Mapping[str, Any],
    item: Any = MISSING,
) -> Any:
    """A copy of `value` with every reference replaced by what it names.

    A string that is exactly one reference becomes the referenced value itself (any JSON type);
    references inside longer text are interpolated (strings as-is, anything else as compact
    JSON). Lists and mapping values are resolved recursively; keys are left alone. Referenced
    values are not copied, so callers must not mutate the result in place.
    """
    if isinstance(value, str):
        return _resolve_str(value, params, outputs, item)
    if isinstance(value, Mapping):
        return {
            k: resolve(v, params=params, outputs=outputs, item=item) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [resolve(v, params=params, outputs=outputs, item=item) for v in value]
    return value
