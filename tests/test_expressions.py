"""`when` conditions: the grammar `check` enforces and what `evaluate` returns or raises."""

import keyword
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge.domain import expressions

PARAMS = {"env": "prod", "n": 3, "flags": {"fast": True}}
TASKS = {
    "check": {"output": {"ok": True, "items": [1, 2], "_hidden": 1}, "status": "succeeded"},
    "list": {"output": ["a", "b", "c"], "status": "succeeded"},
    "none": {"output": None, "status": "skipped"},
}


def ev(expr):
    return expressions.evaluate(expr, params=PARAMS, tasks=TASKS)


@pytest.mark.parametrize(
    ("expr", "tasks", "expected"),
    [
        ("tasks.check.output.ok == true and params.env in ['prod', 'staging']", {"check"}, True),
        ("tasks.check.status == 'succeeded'", {"check"}, True),
        ("len(tasks.list.output) > 0", {"list"}, True),
        ("{{ tasks.list.output[0] == 'a' }}", {"list"}, True),
        ("tasks['check']['output']['ok'] and not tasks['none'].output", {"check", "none"}, True),
        ("tasks.none.output is null or false", {"none"}, True),
        ("params.n * 2 - 1 == 5 and params.n % 2 == 1 and params.n // 2 == 1", set(), True),
        ("params.flags.fast if params.n > 5 else params.env == 'dev'", set(), False),
        ("max(tasks.check.output.items) == 2 and min(1, 2) == 1", {"check"}, True),
        ("sorted(tasks.list.output, reverse=true)[0] == 'c'", {"list"}, True),
        ("any(x == 'b' for x in tasks.list.output)", {"list"}, True),
        ("all([i > 1 for i in tasks.check.output.items])", {"check"}, False),
        ("tasks.list.output[1:] == ['b', 'c'] and abs(-2) == 2", {"list"}, True),
        ("round(float('2.6')) == int('3') and str(params.n) == '3' and bool(1)", set(), True),
        ("tasks.check.output.items", {"check"}, True),  # truthiness of a non-empty list
        ("{'a': 1}['a'] == 1 and (1, 2) != (2, 1) and 1 in {1, 2}", set(), True),
    ],
)
def test_valid_conditions_check_and_evaluate(expr, tasks, expected):
    assert expressions.check(expr) == frozenset(tasks)
    assert ev(expr) is expected


def test_attribute_access_reads_keys_not_methods():
    # `items` is a dict method; a condition must read the key instead.
    tasks = {"t": {"output": {"items": 0, "keys": [1]}, "status": "succeeded"}}
    assert expressions.evaluate("tasks.t.output.items == 0", params={}, tasks=tasks)
    assert expressions.evaluate("len(tasks.t.output.keys) == 1", params={}, tasks=tasks)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("lambda: 1", "lambda is not allowed"),
        ("[x for x in params]", None),  # allowed: a list comprehension
        ("{x: 1 for x in params}", "dict comprehension is not allowed"),
        ("(y := 1)", "':=' (assignment) is not allowed"),
        ("params.__class__", "names starting with '_'"),
        ("tasks.check.output._hidden", "names starting with '_'"),
        ("foo", "unknown name 'foo'"),
        ("open('x')", "unknown function 'open'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("params.env.upper()", "not methods"),
        ("len", "'len' is a function"),
        ("tasks", "write tasks.<name>.output"),
        ("tasks.check", "write tasks.check.output or tasks.check.status"),
        ("tasks.check.result", "field 'result' of task 'check'"),
        ("tasks['check']['attempts']", "field 'attempts' of task 'check'"),
        ("tasks[params.env].output", "name the task"),
        ("2 ** 10 > 1", "operator Pow is not allowed"),
        ("1 << 3", "operator LShift is not allowed"),
        ("f'{params.env}' == 'x'", "an f-string is not allowed"),
        ("len(*params)", "'*' unpacking is not allowed"),
        ("[len for len in params]", "cannot be used as a loop variable"),
        ("params.a ==", "syntax error"),
        ("a = 1", "syntax error"),
        ("", "empty"),
        ("{{ }}", "empty"),
        ("x" * 2_001, "at most 2000"),
        ("-" * 500 + "1", "nested more than"),
        ("+".join(["1"] * 900), "nested more than"),
        ("b'x' == 1", "bytes literal is not allowed"),
    ],
)
def test_forbidden_conditions_are_rejected_with_a_reason(expr, expected):
    if expected is None:
        expressions.check(expr)
        return
    with pytest.raises(expressions.ExpressionError) as err:
        expressions.check(expr)
    assert expected in str(err.value)


def test_errors_carry_the_column():
    with pytest.raises(expressions.ExpressionError, match="column 20"):
        expressions.check("params.env == 1 or foo")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("tasks.missing.status == 'succeeded'", "task 'missing' has no result yet"),
        ("tasks.check.output.nope", "tasks.check.output has no key 'nope' (keys: _hidden, items, ok)"),
        ("tasks.none.output.x", "tasks.none.output is a null value"),
        ("tasks.list.output[7] == 1", "IndexError"),
        ("params.env + 1", "TypeError"),
        ("int(params.env) > 1", "ValueError"),
        ("params.n / 0", "ZeroDivisionError"),
        ("params['missing']", "params has no key 'missing'"),
    ],
)
def test_evaluation_errors_become_expression_errors(expr, expected):
    with pytest.raises(expressions.ExpressionError) as err:
        ev(expr)
    assert expected in str(err.value)
    assert repr(expr) in str(err.value)  # the message names the condition


def test_evaluate_rejects_what_check_rejects():
    with pytest.raises(expressions.ExpressionError, match="lambda"):
        ev("params.n > (lambda: 1)")


OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@given(st.integers(), st.integers(), st.sampled_from(sorted(OPS)), st.booleans())
def test_comparisons_match_python(a, b, op, negate):
    expr = f"{'not ' if negate else ''}params.a {op} params.b"
    got = expressions.evaluate(expr, params={"a": a, "b": b}, tasks={})
    assert got is (OPS[op](a, b) != negate)


@given(st.text(max_size=60))
def test_check_either_accepts_or_raises_expression_error(text):
    # Whatever a user types, `check` answers with a set of task names or an ExpressionError.
    try:
        names = expressions.check(text)
    except expressions.ExpressionError:
        return
    assert isinstance(names, frozenset)


@given(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.sampled_from(["output", "status"]))
def test_check_reports_every_task_it_reads(name, field):
    expr = f"tasks['{name}'].{field} == tasks['other'].status"
    assert expressions.check(expr) == {name, "other"}
    if not keyword.iskeyword(name):  # `tasks.in` is a syntax error: keywords need tasks['in']
        assert expressions.check(f"tasks.{name}.{field} == tasks['other'].status") == {name, "other"}
