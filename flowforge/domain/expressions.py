"""`when` conditions: a small, safe, Python-like boolean language over `params` and `tasks`.

`check` parses without evaluating and enforces the grammar (so validation can reject a bad
condition when the DAG is submitted and learn which tasks it reads); `evaluate` runs a checked
condition with simpleeval. Python's eval/exec are never used. Attribute access reads mapping
keys only (`tasks.a.output.items` is the key 'items', never the dict method).
"""

from __future__ import annotations

import ast
import functools
import threading
from collections.abc import Mapping
from typing import Any

import simpleeval

MAX_LENGTH = 2_000
# simpleeval recurses per node; bounding depth keeps a 2,000-character `-(-(-(...)))` from
# reaching Python's recursion limit on the engine's hot path.
MAX_DEPTH = 100

FUNCTIONS: dict[str, Any] = {
    "len": len,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "any": any,
    "all": all,
    "sorted": sorted,
}
CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}
TASK_FIELDS = frozenset({"output", "status"})

# No power, shifts or bitwise operators: a condition has no use for them, and `**` is the
# classic way to burn CPU inside simpleeval's limits.
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_UNARY_OPS = (ast.Not, ast.USub, ast.UAdd)
_CMP_OPS = (
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot
)
_OPERATORS = {
    op: fn
    for op, fn in simpleeval.DEFAULT_OPERATORS.items()
    if issubclass(op, (*_BIN_OPS, *_UNARY_OPS, *_CMP_OPS))
}
_CONSTANT_TYPES = (str, int, float, bool, type(None))
_EVAL_ERRORS = (
    simpleeval.InvalidExpression,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)

_FORBIDDEN_NAMES = {
    ast.Lambda: "lambda",
    ast.NamedExpr: "':=' (assignment)",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.JoinedStr: "an f-string",
    ast.Starred: "'*' unpacking",
    ast.Await: "await",
}


class ExpressionError(ValueError):
    """A condition does not parse, uses something not allowed, or failed to evaluate."""


def _strip(expr: str) -> str:
    if len(expr) > MAX_LENGTH:
        raise ExpressionError(f"the condition is {len(expr)} characters; at most {MAX_LENGTH}")
    text = expr.strip()
    if text.startswith("{{") and text.endswith("}}"):
        text = text[2:-2].strip()
    if not text:
        raise ExpressionError("the condition is empty")
    return text


def _at(node: ast.AST) -> str:
    return f"column {getattr(node, 'col_offset', 0) + 1}"


class _Checker:
    """Walks a parsed condition, rejecting anything outside the grammar."""

    def __init__(self) -> None:
        self.tasks: set[str] = set()

    def fail(self, node: ast.AST, what: str) -> ExpressionError:
        return ExpressionError(f"{_at(node)}: {what}")

    def walk(self, node: ast.AST, scope: frozenset[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"the condition is nested more than {MAX_DEPTH} levels deep")
        d = depth + 1
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self.walk(v, scope, d)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BIN_OPS):
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            self.walk(node.left, scope, d)
            self.walk(node.right, scope, d)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY_OPS):
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            self.walk(node.operand, scope, d)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, _CMP_OPS):
                    raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            for v in (node.left, *node.comparators):
                self.walk(v, scope, d)
        elif isinstance(node, ast.IfExp):
            for v in (node.test, node.body, node.orelse):
                self.walk(v, scope, d)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, _CONSTANT_TYPES):
                raise self.fail(node, f"a {type(node.value).__name__} literal is not allowed")
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            for v in node.elts:
                self.walk(v, scope, d)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is None:
                    raise self.fail(v, "'**' unpacking is not allowed")
                self.walk(k, scope, d)
                self.walk(v, scope, d)
        elif isinstance(node, ast.Name):
            self.name(node, scope)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            self.access(node, scope, d)
        elif isinstance(node, ast.Call):
            self.call(node, scope, d)
        elif isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            self.comprehension(node, scope, d)
        elif isinstance(node, ast.Slice):
            for v in (node.lower, node.upper, node.step):
                if v is not None:
                    self.walk(v, scope, d)
        else:
            what = _FORBIDDEN_NAMES.get(type(node), type(node).__name__)
            raise self.fail(node, f"{what} is not allowed in a condition")

    def name(self, node: ast.Name, scope: frozenset[str]) -> None:
        if node.id in scope or node.id in CONSTANTS or node.id == "params":
            return
        if node.id == "tasks":
            raise self.fail(node, "write tasks.<name>.output or tasks.<name>.status")
        if node.id in FUNCTIONS:
            raise self.fail(node, f"{node.id!r} is a function; call it, e.g. {node.id}(...)")
        raise self.fail(
            node, f"unknown name {node.id!r}; use params, tasks, true, false or null"
        )

    def key(self, node: ast.Attribute | ast.Subscript) -> str | None:
        """The literal key an accessor reads, or None when it is computed."""
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return node.slice.value
        return None

    def access(
        self, node: ast.Attribute | ast.Subscript, scope: frozenset[str], depth: int
    ) -> None:
        chain: list[ast.Attribute | ast.Subscript] = []
        base: ast.AST = node
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            chain.append(base)
            base = base.value
        chain.reverse()
        if depth + len(chain) > MAX_DEPTH:
            raise self.fail(node, f"the condition is nested more than {MAX_DEPTH} levels deep")
        for part in chain:
            if isinstance(part, ast.Attribute) and part.attr.startswith("_"):
                raise self.fail(part, f"names starting with '_' are not allowed ({part.attr!r})")
        if isinstance(base, ast.Name) and base.id == "tasks" and base.id not in scope:
            task = self.key(chain[0])
            if task is None:
                raise self.fail(chain[0], "name the task: tasks.<name> or tasks['<name>']")
            if len(chain) < 2:
                raise self.fail(node, f"write tasks.{task}.output or tasks.{task}.status")
            field = self.key(chain[1])
            if field not in TASK_FIELDS:
                shown = "a computed field" if field is None else f"field {field!r}"
                raise self.fail(chain[1], f"{shown} of task {task!r}; use 'output' or 'status'")
            self.tasks.add(task)
        else:
            self.walk(base, scope, depth + len(chain))
        for part in chain:
            if isinstance(part, ast.Subscript):
                self.walk(part.slice, scope, depth + len(chain))

    def call(self, node: ast.Call, scope: frozenset[str], depth: int) -> None:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only the built-in functions can be called, not methods")
        if node.func.id not in FUNCTIONS or node.func.id in scope:
            allowed = ", ".join(FUNCTIONS)
            raise self.fail(node, f"unknown function {node.func.id!r}; allowed: {allowed}")
        for a in node.args:
            self.walk(a, scope, depth)
        for kw in node.keywords:
            if kw.arg is None:
                raise self.fail(kw.value, "'**' unpacking is not allowed")
            self.walk(kw.value, scope, depth)

    def comprehension(
        self, node: ast.ListComp | ast.GeneratorExp, scope: frozenset[str], depth: int
    ) -> None:
        for gen in node.generators:
            if gen.is_async:
                raise self.fail(node, "async comprehensions are not allowed")
            self.walk(gen.iter, scope, depth)
            scope = scope | self.targets(gen.target)
            for cond in gen.ifs:
                self.walk(cond, scope, depth)
        self.walk(node.elt, scope, depth)

    def targets(self, node: ast.AST) -> frozenset[str]:
        if isinstance(node, ast.Name):
            reserved = {"params", "tasks", *CONSTANTS, *FUNCTIONS}
            if node.id in reserved or node.id.startswith("_"):
                raise self.fail(node, f"{node.id!r} cannot be used as a loop variable")
            return frozenset({node.id})
        if isinstance(node, ast.Tuple):
            return frozenset().union(*(self.targets(e) for e in node.elts))
        raise self.fail(node, "a loop variable must be a name or a tuple of names")


@functools.lru_cache(maxsize=2048)
def _compile(expr: str) -> tuple[str, ast.expr, frozenset[str]]:
    text = _strip(expr)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = f"column {exc.offset}: " if exc.offset else ""
        raise ExpressionError(f"{where}syntax error: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"the condition cannot be parsed: {exc}") from None
    checker = _Checker()
    checker.walk(tree.body, frozenset(), 0)
    return text, tree.body, frozenset(checker.tasks)


def check(expr: str) -> frozenset[str]:
    """Validate a condition without evaluating it; return the task names it reads.

    Raises ExpressionError naming the column of the first problem.
    """
    return _compile(expr)[2]


def _describe(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # unparse is best effort for a message only
        return "<expression>"


def _keys(container: Mapping[Any, Any]) -> str:
    keys = sorted(str(k) for k in container)
    return ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "") if keys else "none"


# Building an evaluator costs as much as a typical evaluation, so each thread keeps one;
# evaluation is synchronous and never re-enters, so one per thread is safe.
_local = threading.local()


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    """simpleeval with mapping-only attribute access and readable lookup errors."""

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):  # `check` already refused this; keep the guard local too
            raise ExpressionError(f"names starting with '_' are not allowed ({node.attr!r})")
        base = self._eval(node.value)
        return self._read(node.value, base, node.attr)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        base = self._eval(node.value)
        key = self._eval(node.slice)
        if isinstance(base, Mapping):
            return self._read(node.value, base, key)
        try:
            return base[key]
        except (IndexError, KeyError, TypeError) as exc:
            raise ExpressionError(f"{_describe(node)}: {type(exc).__name__}: {exc}") from None

    def _read(self, base_node: ast.AST, base: Any, key: Any) -> Any:
        if not isinstance(base, Mapping):
            kind = "null" if base is None else type(base).__name__
            described = _describe(base_node)
            raise ExpressionError(f"{described} is a {kind} value; it has no key {key!r}")
        try:
            return base[key]
        except (KeyError, TypeError):
            pass
        if isinstance(base_node, ast.Name) and base_node.id == "tasks":
            raise ExpressionError(f"task {key!r} has no result yet (it has not run)")
        raise ExpressionError(
            f"{_describe(base_node)} has no key {key!r} (keys: {_keys(base)})"
        )


def evaluate(
    expr: str, *, params: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Evaluate a condition. `tasks` maps task name -> {"output": ..., "status": ...}.

    Any failure (bad syntax, missing key, wrong type) raises ExpressionError naming the condition.
    """
    text, body, _ = _compile(expr)
    evaluator = getattr(_local, "evaluator", None)
    if evaluator is None:
        evaluator = _local.evaluator = _Evaluator(
            operators=_OPERATORS, functions=dict(FUNCTIONS), names={}
        )
    evaluator.names = {"params": params, "tasks": tasks, **CONSTANTS}
    try:
        return bool(evaluator.eval(text, previously_parsed=body))
    except ExpressionError as exc:
        raise ExpressionError(f"cannot evaluate {text!r}: {exc}") from None
    except _EVAL_ERRORS as exc:
        raise ExpressionError(f"cannot evaluate {text!r}: {type(exc).__name__}: {exc}") from None
    finally:
        evaluator.names = {}  # do not keep a run's outputs alive between calls
