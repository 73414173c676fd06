"""Whole-DAG validation: every problem of a submitted DAG, each with a path and a hint, at once.

`spec` checks one field at a time (through pydantic); this module turns those errors into
user-facing problems and adds the checks that need the whole DAG: names, dependencies, cycles,
references, conditions and limits. The semantic checks run on the raw data even when pydantic
rejected part of it, so one submission shows the user everything there is to fix.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
import yaml

from flowforge.domain import expressions, graph, refs, spec

_MAX_CYCLES = 10  # enough to show the shape of the mess without flooding the report
_MAX_NAMES_SHOWN = 20
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Problem:
    path: str  # where: `name`, `params`, `tasks[2].retries.limit`, `tasks[0].depends[1]`, `$`
    message: str  # what is wrong
    hint: str  # how to fix it

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "hint": self.hint}


class SpecError(ValueError):
    """A DAG (or a run's params) is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.problems)
        lines = [f"invalid DAG: {n} problem{'s' if n != 1 else ''}"]
        for p in self.problems:
            lines.append(f"  {p.path}: {p.message}")
            if p.hint:
                lines.append(f"    hint: {p.hint}")
        return "\n".join(lines)



class _Loader(yaml.SafeLoader):
    """safe_load without timestamps: JSON has no date type, so `2024-01-01` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_text(text: str) -> Any:
    """Parse YAML or JSON text (JSON is YAML). A syntax error becomes a SpecError at path `$`."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [Problem("$", f"{where}{what}", "fix the YAML/JSON syntax at that position")]
        ) from None



def _key_path(path: str, key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(str(key))}]"


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path = _key_path(path, part)
    return path or "$"


def _names(names: Any) -> str:
    shown = sorted(str(n) for n in names)
    if not shown:
        return "none"
    more = f", ... ({len(shown)} in all)" if len(shown) > _MAX_NAMES_SHOWN else ""
    return ", ".join(shown[:_MAX_NAMES_SHOWN]) + more


def _close(word: str, names: Any) -> str:
    match = difflib.get_close_matches(word, [str(n) for n in names], n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _too_big(value: Any, limit: int) -> str | None:
    """Why `value` cannot be stored (too large or not JSON), or None if it fits.

    Streams the encoding and stops past the limit, so a huge (or alias-bombed YAML) value costs
    at most `limit` bytes of work.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    size = 0
    try:
        for chunk in encoder.iterencode(value):
            size += len(chunk)
            if size > limit:
                return f"encodes to more than {limit} bytes of JSON"
    except (TypeError, ValueError) as exc:
        return f"is not valid JSON: {exc}"
    except RecursionError:
        return "is nested too deeply"
    return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string inside a value, with its path; mapping keys are not visited."""
    stack = [(path, value)]
    while stack:
        p, v = stack.pop()
        if isinstance(v, str):
            yield p, v
        elif isinstance(v, Mapping):
            stack.extend((_key_path(p, k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{p}[{i}]", x) for i, x in reversed(list(enumerate(v))))


def _sort_key(problem: Problem) -> list[Any]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", problem.path)]


_EXAMPLES = {
    "name": "name: my_task",
    "fn": "fn: 'package.module:function'",
    "tasks": "tasks: [{name: ..., fn: ...}]",
    "over": "over: '{{ tasks.<name>.output }}'",
}


def _model_at(loc: tuple[Any, ...]) -> type[pydantic.BaseModel] | None:
    match loc:
        case ():
            return spec.DagSpec
        case ("tasks", int()):
            return spec.TaskSpec
        case ("tasks", int(), "retries"):
            return spec.RetryPolicy
        case ("tasks", int(), "map"):
            return spec.MapSpec
    return None


_TYPE_HINTS = {
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "int_from_float": "write a whole number",
    "float_type": "write a number",
    "float_parsing": "write a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "string_type": "write a string",
    "list_type": "write a list",
    "dict_type": "write a mapping",
}
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _field_problem(err: Mapping[str, Any], loc: tuple[Any, ...]) -> Problem:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    message, hint = err["msg"], _TYPE_HINTS.get(kind, "see the DAG spec reference")
    field = loc[-1] if loc else "$"
    if field == "[key]":
        loc = loc[:-1]
        message, hint = f"key {value!r} is not a string", "write every key as a string"
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        message = f"unknown field {field!r}"
        hint = f"{_close(str(field), allowed)}remove the field or check its spelling"
        hint += f"; allowed fields are: {', '.join(allowed)}" if allowed else ""
    elif kind == "missing":
        message, hint = f"`{field}` is required", f"add `{_EXAMPLES.get(str(field), field)}`"
    elif kind == "string_pattern_mismatch" and field == "fn":
        message = f"{value!r} is not a function path"
        hint = "write it as 'package.module:function'"
    elif kind == "string_pattern_mismatch":
        message = f"{value!r} is not a valid name"
        hint = "use 1-63 letters, digits, '_' or '-', starting with a letter or '_'"
    elif kind == "literal_error":
        hint = f"use one of {ctx.get('expected', 'the allowed values')}"
    elif any(k in _BOUNDS for k in ctx):
        bounds = [f"{_BOUNDS[k]} {v}" for k, v in ctx.items() if k in _BOUNDS]
        hint = "use a value " + " and ".join(bounds)
    elif kind == "too_short" and loc == ("tasks",):
        message, hint = "the DAG has no tasks", "add at least one task"
    elif kind == "model_type":
        message = f"expected a mapping, got {type(value).__name__}"
        hint = "write it as a mapping of fields, e.g. {name: ..., fn: ...}"
    elif kind == "string_too_long":
        hint = f"shorten it to at most {ctx.get('max_length')} characters"
    return Problem(_loc_path(loc), message, hint)


def _is_union_tag(part: Any) -> bool:
    # pydantic names the member of a union it tried (`list[any]`, `dict[str,any]`) in `loc`.
    return isinstance(part, str) and "[" in part and part != "[key]"


def _field_problems(exc: pydantic.ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    unions: dict[tuple[Any, ...], list[tuple[tuple[Any, ...], Mapping[str, Any]]]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        if tag is None:
            problems.append(_field_problem(err, loc))
        else:
            unions.setdefault(loc[:tag], []).append((loc[tag + 1 :], err))
    for base, errs in unions.items():
        # A member that got past the type check has the useful (deeper) errors; when no
        # member matched, one problem saying which types are accepted beats one per member.
        deep = [(base + rest, err) for rest, err in errs if rest]
        if deep:
            problems.extend(_field_problem(err, loc) for loc, err in deep)
        else:
            got = type(errs[0][1].get("input")).__name__
            problems.append(
                Problem(
                    _loc_path(base),
                    f"expected a list or a mapping, got {got}",
                    "use a list for positional arguments or a mapping for keyword arguments",
                )
            )
    return problems


_REF_HINT = "references look like {{ params.x }}, {{ tasks.a.output.key }} or {{ item }}"
_OVER_HINT = "write e.g. '{{ tasks.list_files.output }}' or '{{ params.items }}'"
_WHEN_HINT = "write e.g. tasks.check.output.ok == true and params.env == 'prod'"
_SIZE_HINT = "pass large data through storage and reference it by path"


def _ancestor_masks(deps: Mapping[str, list[str]], bits: Mapping[str, int]) -> dict[str, int]:
    """Ancestors of every task as an int bitmask (Kahn's order); cyclic parts are left out.

    Bitmasks keep a 10,000-task chain at megabytes, where sets of names would need gigabytes.
    """
    indegree = {n: len(set(d)) for n, d in deps.items()}
    downstream: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in set(ds):
            downstream[d].append(n)
    ready = [n for n, k in indegree.items() if k == 0]
    masks: dict[str, int] = {}
    while ready:
        n = ready.pop()
        masks[n] = 0
        for d in deps[n]:
            masks[n] |= masks[d] | bits[d]
        for child in downstream[n]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return masks


class _Checker:
    """The semantic checks of one raw DAG; each `check_*` appends to `problems`."""

    def __init__(self, raw: Mapping[str, Any], limits: spec.Limits) -> None:
        self.raw, self.limits = raw, limits
        self.problems: list[Problem] = []
        params = raw.get("params", {})
        # None when `params` is unusable (pydantic reports it): skip the param checks.
        self.params = frozenset(map(str, params)) if isinstance(params, Mapping) else None
        self.index: dict[str, int] = {}  # task name -> index of the first task so named
        self.deps: dict[int, list[str]] = {}  # task index -> its known, non-self depends
        self.bits: dict[str, int] = {}
        self.masks: dict[str, int] = {}  # absent for tasks inside or below a cycle

    def add(self, path: str, message: str, hint: str) -> None:
        self.problems.append(Problem(path, message, hint))

    def check(self) -> list[Problem]:
        params = self.raw.get("params", {})
        if isinstance(params, Mapping) and (why := _too_big(params, self.limits.max_payload_bytes)):
            self.add("params", f"the params {why}", _SIZE_HINT)
        secret = self.raw.get("secret_params")
        for i, name in enumerate(secret if isinstance(secret, list) else []):
            if self.params is not None and isinstance(name, str) and name not in self.params:
                self.add(f"secret_params[{i}]", f"{name!r} is not a declared param",
                         f"declare it under `params` (declared: {_names(self.params)})")
        tasks = self.raw.get("tasks")
        if not isinstance(tasks, list):
            return self.problems
        if len(tasks) > self.limits.max_tasks:
            # Skip the per-task checks: their cost grows with a size we just refused.
            self.add(
                "tasks",
                f"{len(tasks)} tasks is above the limit of {self.limits.max_tasks}",
                "split the workflow into several DAGs, or use `map` for repeated work",
            )
            return self.problems
        entries = [(i, t) for i, t in enumerate(tasks) if isinstance(t, Mapping)]
        self.check_names(entries)
        self.check_depends(entries)
        by_name = {n: self.deps[i] for n, i in self.index.items()}
        self.check_cycles(by_name, tasks)
        self.bits = {n: 1 << k for k, n in enumerate(self.index)}
        self.masks = _ancestor_masks(by_name, self.bits)
        for i, t in entries:
            self.check_task(i, t)
        return self.problems

    def check_names(self, entries: list[tuple[int, Mapping[str, Any]]]) -> None:
        for i, t in entries:
            name = t.get("name")
            if isinstance(name, str) and name in self.index:
                first = self.index[name]
                self.add(
                    f"tasks[{i}].name",
                    f"duplicate task name {name!r}: tasks[{first}] already uses it",
                    "task names must be unique; rename one of them",
                )
            elif isinstance(name, str):
                self.index[name] = i

    def check_depends(self, entries: list[tuple[int, Mapping[str, Any]]]) -> None:
        for i, t in entries:
            self.deps[i] = []
            listed = t.get("depends")
            for k, d in enumerate(listed if isinstance(listed, list) else []):
                path = f"tasks[{i}].depends[{k}]"
                if not isinstance(d, str):
                    continue
                if d == t.get("name"):
                    self.add(path, f"task {d!r} depends on itself", "remove it from depends")
                elif d not in self.index:
                    hint = f"{_close(d, self.index)}known tasks: {_names(self.index)}"
                    self.add(path, f"unknown task {d!r}", hint)
                else:
                    self.deps[i].append(d)

    def check_cycles(self, deps: Mapping[str, list[str]], tasks: list[Any]) -> None:
        remaining = {n: list(d) for n, d in deps.items()}
        for _ in range(_MAX_CYCLES):
            cycle = graph.find_cycle(remaining)
            if cycle is None:
                return
            loop = cycle[:-1]
            start = min(range(len(loop)), key=lambda k: self.index[loop[k]])
            loop = loop[start:] + loop[:start]  # start at the earliest task: stable reports
            first, second = loop[0], loop[1 % len(loop)]
            k = tasks[self.index[first]]["depends"].index(second)
            self.add(
                f"tasks[{self.index[first]}].depends[{k}]",
                f"dependency cycle: {' -> '.join([*loop, first])} (each depends on the next)",
                "remove one of these dependencies",
            )
            remaining[first] = [d for d in remaining[first] if d != second]

    def task_ref(self, what: str, path: str, task: Any, ancestors: int | None, target: str) -> None:
        """Check a reference from task `task` to task `target` (in args, map.over or when)."""
        if target == task:
            self.add(path, f"{what}: a task cannot read its own result", "remove the reference")
        elif target not in self.index:
            hint = f"{_close(target, self.index)}known tasks: {_names(self.index)}"
            self.add(path, f"{what}: unknown task {target!r}", hint)
        elif ancestors is not None and not ancestors & self.bits[target]:
            message = f"{what}: task {target!r} is not upstream of {task!r}"
            self.add(path, message, f"add {target!r} to depends")

    def ref(self, r: refs.Ref, path: str, task: Any, ancestors: int | None, mapped: bool) -> None:
        if r.kind == "params" and self.params is not None and r.path[0] not in self.params:
            declared = f"declare it under `params` (declared: {_names(self.params)})"
            hint = f"{_close(r.path[0], self.params)}{declared}"
            self.add(path, f"{r.text}: unknown param {r.path[0]!r}", hint)
        elif r.kind == "item" and not mapped:
            self.add(
                path,
                f"{r.text}: there is no item; {{{{ item }}}} only exists in a task with `map`",
                "add `map: {over: ...}` to this task, or reference a param or a task output",
            )
        elif r.kind == "tasks":
            assert r.task is not None
            self.task_ref(r.text, path, task, ancestors, r.task)

    def check_runtime(self, at: str, t: Mapping[str, Any]) -> None:
        """What the task runs (a function or a container) and where it may run."""
        fn, image, command, executor = t.get("fn"), t.get("image"), t.get("command"), t.get("executor", "light")
        if fn is None and image is None:
            self.add(at, "the task runs nothing", "add `fn: package.module:function`, or `image:` for a container")
        if command is not None and image is None:
            self.add(f"{at}.command", "a command needs an image to run in", "add `image:`, or use `fn:`")
        if command is not None and fn is not None:
            self.add(f"{at}.command", "a task runs a function or a command, not both",
                     "drop `command` (the function runs in `image`), or drop `fn`")
        if image is not None and fn is None:
            args = t.get("args")
            if isinstance(args, Mapping) or (isinstance(args, list) and not all(isinstance(a, str) for a in args)):
                self.add(f"{at}.args", "a container's args are a list of strings",
                         "write e.g. args: ['--date', '{{ params.date }}']")
        if executor == "light":
            resources = t.get("resources")
            gpu = resources.get("gpu") if isinstance(resources, Mapping) else None
            for field, present in (("image", image is not None), ("resources.gpu", _is_int(gpu) and gpu > 0),
                                   ("env", bool(t.get("env"))), ("node_selector", bool(t.get("node_selector"))),
                                   ("tolerations", bool(t.get("tolerations")))):
                if present:
                    self.add(f"{at}.{field}", f"`{field}` applies to a fresh Pod, but the task is executor: light",
                             "set executor: heavy (or auto, to let the router decide)")

    def check_task(self, i: int, t: Mapping[str, Any]) -> None:
        at, name, limits = f"tasks[{i}]", t.get("name"), self.limits
        ancestors: int | None = 0
        for d in self.deps[i]:
            if d not in self.masks:
                ancestors = None  # inside or below a cycle: "upstream" means nothing there
                break
            ancestors |= self.masks[d] | self.bits[d]

        retries = t.get("retries")
        limit = retries.get("limit") if isinstance(retries, Mapping) else None
        if _is_int(limit) and limit > limits.max_retries:
            message = f"{limit} retries is above the limit of {limits.max_retries}"
            self.add(f"{at}.retries.limit", message, f"use at most {limits.max_retries}")
        timeout, most = t.get("timeout_seconds"), limits.max_timeout_seconds
        if _is_number(timeout) and timeout > most:
            message = f"{timeout} seconds is above the limit of {most:g}"
            self.add(f"{at}.timeout_seconds", message, f"use at most {most:g} seconds")

        mapping = t.get("map")
        mapped = isinstance(mapping, Mapping)
        if mapped:
            self.check_map(at, mapping, name, ancestors)
        self.check_runtime(at, t)

        args = t.get("args")
        if args is not None and (why := _too_big(args, limits.max_payload_bytes)):
            self.add(f"{at}.args", f"the arguments {why}", _SIZE_HINT)
        elif args is not None:
            for path, text in _strings(args, f"{at}.args"):
                try:
                    found = refs.references(text)
                except refs.RefError as exc:
                    self.add(path, str(exc), _REF_HINT)
                    continue
                for r in found:
                    self.ref(r, path, name, ancestors, mapped)

        when = t.get("when")
        if isinstance(when, str):
            try:
                used = expressions.check(when)
            except expressions.ExpressionError as exc:
                dashed = sorted(n for n in self.index if "-" in n and n in when)
                hint = (  # `tasks.my-task` parses as a subtraction
                    f"write a name with '-' as tasks[{dashed[0]!r}]" if dashed else _WHEN_HINT
                )
                self.add(f"{at}.when", f"invalid condition: {exc}", hint)
                return
            for target in sorted(used):
                what = f"condition reads tasks.{target}"
                self.task_ref(what, f"{at}.when", name, ancestors, target)

    def check_map(
        self, at: str, mapping: Mapping[str, Any], name: Any, ancestors: int | None
    ) -> None:
        max_items, fanout = mapping.get("max_items"), self.limits.max_fanout
        if _is_int(max_items) and max_items > fanout:
            message = f"{max_items} items is above the fan-out limit of {fanout}"
            self.add(f"{at}.map.max_items", message, f"use at most {fanout}, or split the list")
        over, path = mapping.get("over"), f"{at}.map.over"
        if not isinstance(over, str):
            return
        try:
            r = refs.single(over)
        except refs.RefError as exc:
            self.add(path, str(exc), _OVER_HINT)
            return
        if r is None:
            self.add(path, f"{over!r} is not exactly one reference", _OVER_HINT)
        elif r.kind == "item":
            self.add(path, f"{r.text}: a map cannot iterate over its own item", _OVER_HINT)
        else:
            self.ref(r, path, name, ancestors, mapped=True)


def parse_dag(raw: Any, limits: spec.Limits = spec.Limits()) -> spec.DagSpec:
    """Validate a DAG (a mapping, or YAML/JSON text) and return its spec.

    Raises SpecError listing every problem found, sorted by path.
    """
    if isinstance(raw, str):
        raw = load_text(raw)
    if not isinstance(raw, Mapping):
        got = "nothing" if raw is None else f"a {type(raw).__name__}"
        message = f"a DAG must be a mapping, got {got}"
        raise SpecError([Problem("$", message, "write `name:` and `tasks:` at the top level")])
    problems: list[Problem] = []
    dag: spec.DagSpec | None = None
    try:
        dag = spec.DagSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems.extend(_field_problems(exc))
    problems.extend(_Checker(raw, limits).check())
    if problems or dag is None:
        raise SpecError(sorted(problems, key=_sort_key))
    return dag


def merge_params(
    dag: spec.DagSpec, given: Mapping[str, Any], limits: spec.Limits = spec.Limits()
) -> dict[str, Any]:
    """A run's params: the DAG's defaults overlaid by `given`. Raises SpecError on problems."""
    problems: list[Problem] = []
    merged = dict(dag.params)
    for key, value in given.items():
        if key in dag.params:
            merged[key] = value
        else:
            hint = f"{_close(str(key), dag.params)}declared params: {_names(dag.params)}"
            problems.append(Problem(_key_path("params", key), f"unknown param {key!r}", hint))
    if why := _too_big(merged, limits.max_payload_bytes):
        problems.append(Problem("params", f"the params {why}", _SIZE_HINT))
    if problems:
        raise SpecError(problems)
    return merged
