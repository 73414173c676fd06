"""The Python SDK: write tasks as plain functions, wire them into a DAG, submit it as JSON.

    @task(retries=3)
    def extract(day: str) -> list[str]: ...

    with DAG("etl", params={"day": "2024-01-01"}) as dag:
        files = extract(dag.param("day"))
        load.map(files.output, max_items=500)
    dag.to_json()

A decorated function called inside `with DAG(...)` records a task and returns a `TaskRef`;
called anywhere else it is the plain function (that is how agents run it). This module also
owns the attempt context (`context()`, `cancelled()`) that task code reads while it runs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flowforge.domain import expressions, refs, spec, validation

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_builder: contextvars.ContextVar[DAG | None] = contextvars.ContextVar("flowforge_dag", default=None)


# ---------------------------------------------------------------------------------------------
# References


class Reference:
    """A value known only when the run executes: a param, a task output (or part of one), or
    the current map item. `ref.key` and `ref["key"]` / `ref[0]` reach deeper; `str(ref)` is its
    `{{ ... }}` template, so f-strings interpolate it."""

    __slots__ = ("_root", "_task", "_path", "_dag")

    def __init__(
        self, root: str, task: str | None = None, path: tuple[str, ...] = (), dag: DAG | None = None
    ) -> None:
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_dag", dag)

    def __getattr__(self, name: str) -> Reference:
        if name.startswith("_"):  # keep dunder probes (copy, pickle, IPython) working
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, key: str | int) -> Reference:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"reference keys are str or int, not {type(key).__name__}")
        segment = str(key)
        if isinstance(key, int) and key < 0 or not _SEGMENT.match(segment):
            raise ValueError(
                f"{key!r} cannot be used in a reference: use keys of letters, digits, '_' "
                "and '-', and list indexes >= 0"
            )
        return Reference(self._root, self._task, (*self._path, segment), self._dag)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("references are immutable")

    def __str__(self) -> str:
        head = f"tasks.{self._task}.output" if self._root == "tasks" else self._root
        return "{{ " + ".".join((head, *self._path)) + " }}"

    def __repr__(self) -> str:
        return f"<Reference {self}>"

    def __iter__(self) -> Any:
        raise TypeError(
            "a reference has no items while the DAG is being built; use task.map(ref) to run "
            "a task once per item"
        )

    def __bool__(self) -> bool:
        raise TypeError(
            "a reference has no value while the DAG is being built; use "
            ".options(when='...') to run a task conditionally"
        )


item = Reference("item")  # the current item inside a mapped task: `item`, `item.key`


class TaskRef:
    """A task recorded in a DAG. Pass it (or `.output`, `.output.key`) to downstream tasks."""

    __slots__ = ("name", "dag", "output")

    def __init__(self, name: str, dag: DAG) -> None:
        self.name = name
        self.dag = dag
        self.output = Reference("tasks", name, (), dag)

    def __repr__(self) -> str:
        return f"<TaskRef {self.name!r} of DAG {self.dag.name!r}>"


# ---------------------------------------------------------------------------------------------
# Tasks


def _function_path(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", "")
    if not inspect.isfunction(fn):
        raise TypeError(f"@task decorates functions, not {type(fn).__name__} objects")
    if fn.__name__ == "<lambda>":
        raise TypeError("@task cannot decorate a lambda: agents import tasks by name")
    if "<locals>" in qualname or "." in qualname:
        raise TypeError(
            f"@task needs a module-level function; {qualname!r} is nested in a function or "
            "class, so agents cannot import it as 'module:function'"
        )
    return f"{fn.__module__}:{qualname}"


def _retries(value: int | dict[str, Any] | spec.RetryPolicy | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, spec.RetryPolicy):
        return value.model_dump()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return {"limit": value}
    raise TypeError(f"retries is an int, a dict or a RetryPolicy, not {type(value).__name__}")


_UNSET: Any = object()
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Task:
    """A decorated task function: the plain function outside a DAG, a task recorder inside.

    It carries the function's `__wrapped__`, `__name__`, `__module__` and, so that
    `inspect.iscoroutinefunction` answers as it would for the function, its code object.
    """

    def __init__(
        self, fn: Callable[..., Any], *, fn_path: str, name: str, options: dict[str, Any]
    ) -> None:
        functools.update_wrapper(self, fn)
        # inspect treats an object with these attributes as function-like, so agents that ask
        # "is this a coroutine function?" get the answer for the wrapped function.
        self.__code__ = fn.__code__
        self.__defaults__ = fn.__defaults__
        self.__kwdefaults__ = fn.__kwdefaults__
        self._fn_path = fn_path
        self._name = name
        self._explicit_name = False
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dag = _builder.get()
        if dag is None:
            return self.__wrapped__(*args, **kwargs)
        return dag._record(self, args, kwargs, None)

    def __reduce__(self) -> str:
        # Pickle by reference, like a function: the module attribute is this object.
        return self.__qualname__

    def __repr__(self) -> str:
        return f"<task {self._fn_path}>"

    def options(
        self,
        *,
        name: str = _UNSET,
        when: str | None = _UNSET,
        depends: list[TaskRef | str] = _UNSET,
        retries: int | dict[str, Any] | spec.RetryPolicy | None = _UNSET,
        timeout_seconds: float | None = _UNSET,
        executor: spec.Executor = _UNSET,
        pool: str = _UNSET,
        resources: dict[str, Any] | None = _UNSET,
        image: str | None = _UNSET,
        env: dict[str, str] | None = _UNSET,
        node_selector: dict[str, str] | None = _UNSET,
        tolerations: list[dict[str, Any]] | None = _UNSET,
    ) -> Task:
        """A copy of this task with per-call settings; call it (or `.map` it) as usual."""
        copy = Task(
            self.__wrapped__, fn_path=self._fn_path, name=self._name, options=dict(self._options)
        )
        copy._explicit_name = self._explicit_name
        if name is not _UNSET:
            copy._name, copy._explicit_name = name, True
        if retries is not _UNSET:
            retries = _retries(retries)
        given = {
            "when": when,
            "depends": depends,
            "retries": retries,
            "timeout_seconds": timeout_seconds,
            "executor": executor,
            "pool": pool,
            "resources": resources,
            "image": image,
            "env": env,
            "node_selector": node_selector,
            "tolerations": tolerations,
        }
        copy._options.update({k: v for k, v in given.items() if v is not _UNSET})
        return copy

    def map(
        self, over: Reference | TaskRef | str, *args: Any, max_items: int = 1_000, **kwargs: Any
    ) -> TaskRef:
        """Run this task once per item of `over` (a list reference); returns the mapped task.

        The item is passed as `sdk.item` wherever it appears in the arguments; if it appears
        nowhere, it becomes the first positional argument (or, with keyword arguments, the
        function's first parameter).
        """
        dag = _builder.get()
        if dag is None:
            raise RuntimeError("Task.map() records a mapped task; call it inside `with DAG(...):`")
        if not _mentions_item((args, kwargs)):
            if kwargs and not args:
                params = list(inspect.signature(self.__wrapped__).parameters.values())
                if not params or params[0].kind not in _NAMED:
                    raise TypeError(
                        f"{self.__name__}() has no first named parameter to take the item; "
                        "pass sdk.item where it belongs"
                    )
                kwargs = {params[0].name: item, **kwargs}
            else:
                args = (item, *args)
        return dag._record(self, args, kwargs, {"over": over, "max_items": max_items})


def _mentions_item(value: Any) -> bool:
    if isinstance(value, Reference):
        return value._root == "item"
    if isinstance(value, str):
        return any(r.kind == "item" for r in refs.references(value))
    if isinstance(value, Mapping):
        return any(_mentions_item(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions_item(v) for v in value)
    return False


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retries: int | dict[str, Any] | spec.RetryPolicy | None = None,
    timeout_seconds: float | None = None,
    executor: spec.Executor = "light",
    pool: str = "default",
    resources: dict[str, Any] | None = None,
    image: str | None = None,
    env: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> Any:
    """Make a function a FlowForge task; use as `@task` or `@task(retries=3, pool="gpu")`.
    Heavy tasks (`executor="heavy"`, or `"auto"` with large `resources`) run in a fresh Pod:
    `image` (default: the agent image), `env`, `node_selector`, `tolerations` shape it."""

    def decorate(f: Callable[..., Any]) -> Task:
        options = {
            "retries": _retries(retries),
            "timeout_seconds": timeout_seconds,
            "executor": executor,
            "pool": pool,
            "resources": resources,
            "image": image,
            "env": env,
            "node_selector": node_selector,
            "tolerations": tolerations,
        }
        return Task(f, fn_path=_function_path(f), name=name or f.__name__, options=options)

    return decorate(fn) if fn is not None else decorate


# ---------------------------------------------------------------------------------------------
# DAG builder


class DAG:
    """Collects tasks called inside `with DAG(...):` and turns them into a validated spec."""

    def __init__(
        self, name: str, params: Mapping[str, Any] | None = None, description: str = ""
    ) -> None:
        self.name = name
        self.params = dict(params or {})
        self.description = description
        self._tasks: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self._tokens: list[contextvars.Token[DAG | None]] = []

    def __enter__(self) -> DAG:
        self._tokens.append(_builder.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _builder.reset(self._tokens.pop())

    def param(self, name: str) -> Reference:
        """A reference to run parameter `name` (declared in `params`)."""
        if name not in self.params:
            declared = ", ".join(sorted(self.params)) or "none"
            raise KeyError(f"DAG {self.name!r} declares no param {name!r} (declared: {declared})")
        return Reference("params", None, (), self)[name]

    def _unique_name(self, base: str) -> str:
        n = self._counts.get(base, 0)
        while True:
            n += 1
            candidate = base if n == 1 else f"{base}_{n}"
            if candidate not in self._names:
                self._counts[base] = n
                return candidate

    def _value(self, value: Any, depends: dict[str, None]) -> Any:
        """Turn an argument into JSON, collecting the upstream tasks it references."""
        if isinstance(value, TaskRef):
            value = value.output
        if isinstance(value, Reference):
            if value._dag is not None and value._dag is not self:
                raise ValueError(f"{value} belongs to DAG {value._dag.name!r}, not {self.name!r}")
            if value._root == "tasks":
                depends[value._task] = None
            return str(value)
        if isinstance(value, str):
            for r in refs.references(value):  # f-strings and hand-written templates count too
                if r.kind == "tasks" and r.task in self._names:
                    depends[r.task] = None
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} is not valid JSON; pass a finite number")
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, (list, tuple)):
            return [self._value(v, depends) for v in value]
        if isinstance(value, Mapping):
            for k in value:
                if not isinstance(k, str):
                    raise TypeError(f"argument mapping keys must be strings, not {k!r}")
            return {k: self._value(v, depends) for k, v in value.items()}
        if isinstance(value, Task):
            raise TypeError(f"pass {value.__name__}() (a call records the task), not the task")
        raise TypeError(
            f"a {type(value).__name__} argument cannot be sent to a task; pass JSON values "
            "(str, int, float, bool, None, list, dict) or references"
        )

    def _record(
        self,
        t: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mapping: dict[str, Any] | None,
    ) -> TaskRef:
        if args and kwargs:
            raise TypeError(
                f"{t.__name__}(): pass either positional or keyword arguments, not both "
                "(a task's args are a list or a mapping)"
            )
        if t._explicit_name and t._name in self._names:
            raise ValueError(f"DAG {self.name!r} already has a task named {t._name!r}")
        depends: dict[str, None] = {}  # an ordered set: upstream tasks in order of mention
        converted = self._value(kwargs if kwargs else list(args), depends)
        options = dict(t._options)
        for d in options.pop("depends", None) or []:
            depends[d.name if isinstance(d, TaskRef) else str(d)] = None
        when = options.pop("when", None)
        if when is not None:
            depends.update((n, None) for n in sorted(expressions.check(when)) if n in self._names)
        if mapping is not None:
            mapping = {**mapping, "over": self._value(mapping["over"], depends)}
        # Named last, so a call that raised above leaves no gap in the `name_2` numbering.
        name = t._name if t._explicit_name else self._unique_name(t._name)
        entry: dict[str, Any] = {"name": name, "fn": _importable(t._fn_path), "args": converted}
        if when is not None:
            entry["when"] = when
        if mapping is not None:
            entry["map"] = mapping
        entry["depends"] = list(depends)
        entry.update({k: v for k, v in options.items() if v is not None})
        self._tasks.append(entry)
        self._names.add(name)
        return TaskRef(name, self)

    def to_spec(self, limits: spec.Limits = spec.Limits()) -> spec.DagSpec:
        """The validated spec; raises validation.SpecError listing every problem."""
        raw = {
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "tasks": self._tasks,
        }
        return validation.parse_dag(raw, limits)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data, leaving out fields that have their default value."""
        return self.to_spec().model_dump(mode="json", exclude_defaults=True)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _importable(fn_path: str) -> str:
    """`fn_path`, with `__main__` replaced by the module's real name under `python -m`."""
    module, _, qualname = fn_path.partition(":")
    if module != "__main__":
        return fn_path
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is None or not main_spec.name or main_spec.name == "__main__":
        raise ValueError(
            f"task {qualname!r} is defined in a script (__main__), which agents cannot import; "
            "move it to a module, or run the script as `python -m package.module`"
        )
    return f"{main_spec.name}:{qualname}"


# ---------------------------------------------------------------------------------------------
# Attempt context


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What task code may know about the attempt running it. Run parameters are not here on
    purpose: pass what a task needs as its `args`, so the envelope stays small."""

    run_id: str
    task: str
    attempt: int
    tenant: str
    map_index: int | None
    cancelled: threading.Event


_context: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "flowforge_attempt", default=None
)


def context() -> TaskContext:
    """The current attempt's context; raises RuntimeError outside an attempt."""
    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("not running inside a FlowForge attempt")
    return ctx


def cancelled() -> bool:
    """Whether the current attempt was asked to stop; check it in long loops.

    Always False outside an attempt, so task code also runs as a plain function.
    """
    ctx = _context.get()
    return ctx is not None and ctx.cancelled.is_set()


def _set_context(ctx: TaskContext) -> contextvars.Token[TaskContext | None]:
    """Install the attempt context (agents only); undo with `_reset_context(token)`."""
    return _context.set(ctx)


def _reset_context(token: contextvars.Token[TaskContext | None]) -> None:
    _context.reset(token)
