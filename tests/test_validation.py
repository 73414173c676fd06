"""Whole-DAG validation: every problem at once, each with a path and a hint."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge.domain import spec, validation


def task(name, fn="pkg.mod:fn", **fields):
    return {"name": name, "fn": fn, **fields}


def dag(*tasks, **fields):
    return {"name": "d", **fields, "tasks": list(tasks)}


def problems(raw, limits=spec.Limits()):
    with pytest.raises(validation.SpecError) as err:
        validation.parse_dag(raw, limits)
    return {p.path: p for p in err.value.problems}


def test_a_clean_yaml_dag_parses():
    text = """
name: etl
params: {day: 2024-01-01, envs: [prod]}
tasks:
  - name: extract
    fn: etl.tasks:extract
    args: {day: "{{ params.day }}"}
    retries: {limit: 3, backoff: fixed}
  - name: load
    fn: etl.tasks:load
    depends: [extract]
    map: {over: "{{ tasks.extract.output.files }}", max_items: 50}
    args: ["{{ item.path }}", "{{ params.envs.0 }}"]
  - name: report
    fn: etl.tasks:report
    depends: [load]
    when: "tasks.extract.output.count > 0 and tasks.load.status == 'succeeded'"
    args: ["total {{ tasks.extract.output.count }}"]
"""
    result = validation.parse_dag(text)
    assert [t.name for t in result.tasks] == ["extract", "load", "report"]
    assert result.params["day"] == "2024-01-01"  # dates stay strings
    assert result.task("extract").retries.limit == 3
    assert result.task("load").map.max_items == 50


def test_an_invalid_dag_reports_all_its_errors_with_paths():
    raw = dag(
        task("a", depends=["c"]),  # a -> c -> b -> a
        task("b", depends=["a", "nope"], args={"x": "{{ tasks.a }}"}),
        task("c", depends=["b"], when="tasks.b.output.ok ==", args=["{{ params.missing }}"]),
        task("b", fn="not a function"),
        task("m", map={"over": "{{ params.items }}", "max_items": 50_000}, retries={"limit": 500}),
        task("r", depends=["m"], args={"v": "{{ tasks.a.output }}", "i": "{{ item }}"}),
        task("late", timeout_seconds=10**9, executor="gpu", colour="red"),
        params={"items": [1, 2]},
    )
    found = problems(raw)
    expected = {
        "tasks[0].depends[0]": "dependency cycle: a -> c -> b -> a",
        "tasks[1].depends[1]": "unknown task 'nope'",
        "tasks[1].args.x": "{{ tasks.a }}",
        "tasks[2].when": "invalid condition",
        "tasks[2].args[0]": "unknown param 'missing'",
        "tasks[3].name": "duplicate task name 'b'",
        "tasks[3].fn": "'not a function' is not a function path",
        "tasks[4].map.max_items": "above the fan-out limit of 10000",
        "tasks[4].retries.limit": "above the limit of 100",
        "tasks[5].args.v": "task 'a' is not upstream of 'r'",
        "tasks[5].args.i": "only exists in a task with `map`",
        "tasks[6].timeout_seconds": "above the limit",
        "tasks[6].executor": "Input should be 'light', 'heavy' or 'auto'",
        "tasks[6].colour": "unknown field 'colour'",
    }
    for path, message in expected.items():
        assert path in found, f"{path} missing from {sorted(found)}"
        assert message in found[path].message, found[path]
        assert found[path].hint
    assert found["tasks[5].args.v"].hint == "add 'a' to depends"
    assert found["tasks[1].depends[1]"].hint.startswith("known tasks: a, b, c")
    assert found["tasks[3].fn"].hint == "write it as 'package.module:function'"
    # The report lists problems in document order and prints every path.
    with pytest.raises(validation.SpecError) as err:
        validation.parse_dag(raw)
    paths = [p.path for p in err.value.problems]
    assert paths.index("tasks[1].depends[1]") < paths.index("tasks[3].name")
    assert all(f"  {p}: " in str(err.value) for p in expected)


def test_pydantic_errors_get_paths_and_hints():
    raw = dag(
        task("a", dependz=["x"], retries={"limit": -1, "bakoff": "fixed"}),
        {"fn": "pkg:fn"},
        "not a task",
        task("b", args="oops"),
        task("c", args={1: "int key"}),
        task("bad name", pool="p q"),
        task("d", map={"max_items": 3}),
    )
    found = problems(raw)
    assert found["tasks[0].dependz"].hint.startswith("did you mean 'depends'? remove the field")
    assert "allowed fields are: name, fn, args, depends" in found["tasks[0].dependz"].hint
    assert "did you mean 'backoff'?" in found["tasks[0].retries.bakoff"].hint
    assert found["tasks[0].retries.limit"].hint == "use a value >= 0"
    assert found["tasks[1].name"].hint == "add `name: my_task`"
    assert found["tasks[2]"].message == "expected a mapping, got str"
    assert found["tasks[3].args"].message == "expected a list or a mapping, got str"
    assert found["tasks[4].args[1]"].message == "key 1 is not a string"
    assert "is not a valid name" in found["tasks[5].name"].message
    assert "is not a valid name" in found["tasks[5].pool"].message
    assert found["tasks[6].map.over"].hint == "add `over: '{{ tasks.<name>.output }}'`"


def test_top_level_problems():
    assert problems({"tasks": []}).keys() == {"name", "tasks"}
    assert problems({"tasks": []})["tasks"].message == "the DAG has no tasks"
    assert problems([1, 2])["$"].message == "a DAG must be a mapping, got a list"
    assert problems("")["$"].message == "a DAG must be a mapping, got nothing"


def test_yaml_syntax_errors_point_at_line_and_column():
    with pytest.raises(validation.SpecError) as err:
        validation.load_text("name: d\ntasks: [\n  {name: a\n")
    [problem] = err.value.problems
    assert problem.path == "$"
    assert problem.message.startswith("line 4, column 1:")
    assert validation.load_text('{"name": "d", "n": [1, 2.5, null]}') == {
        "name": "d",
        "n": [1, 2.5, None],
    }


def test_dependency_problems():
    found = problems(
        dag(
            task("extract"),
            task("load", depends=["load", "extrakt"]),
            task("x", depends=["y"]),
            task("y", depends=["x"]),
        )
    )
    assert found["tasks[1].depends[0]"].message == "task 'load' depends on itself"
    assert found["tasks[1].depends[1]"].hint.startswith("did you mean 'extract'?")
    assert found["tasks[2].depends[0]"].message.startswith("dependency cycle: x -> y -> x")


def test_every_independent_cycle_is_reported():
    found = problems(
        dag(
            task("a", depends=["b"]),
            task("b", depends=["a"]),
            task("c", depends=["d"]),
            task("d", depends=["e"]),
            task("e", depends=["c"]),
        )
    )
    assert "a -> b -> a" in found["tasks[0].depends[0]"].message
    assert "c -> d -> e -> c" in found["tasks[2].depends[0]"].message


def test_references_must_name_upstream_tasks_and_declared_params():
    found = problems(
        dag(
            task("a"),
            task("b", depends=["a"]),
            task("c", depends=["b"], args=["{{ tasks.a.output }}"]),  # transitive: fine
            task("d", args=["{{ tasks.b.output }}", "{{ tasks.zz.output }}"]),
            task("e", args={"k": "{{ tasks.e.output }}", "p": "{{ params.dya }}"}),
            params={"day": 1},
        )
    )
    assert "tasks[2].args[0]" not in found
    assert found["tasks[3].args[0]"].hint == "add 'b' to depends"
    assert found["tasks[3].args[1]"].message == "{{ tasks.zz.output }}: unknown task 'zz'"
    assert found["tasks[4].args.k"].message.endswith("a task cannot read its own result")
    assert found["tasks[4].args.p"].hint.startswith("did you mean 'day'? declare it")


def test_when_must_parse_and_read_only_upstream_tasks():
    found = problems(
        dag(
            task("a"),
            task("b", depends=["a"], when="tasks.a.status == 'succeeded'"),
            task("c", when="tasks.a.output.ok"),
            task("d", when="tasks.d.status == 'failed'"),
            task("e", depends=["a"], when="import os"),
            task("my-task"),
            task("f", depends=["my-task"], when="tasks.my-task.status == 'succeeded'"),
            task("g", depends=["my-task"], when="tasks['my-task'].status == 'succeeded'"),
        )
    )
    assert found["tasks[6].when"].hint == "write a name with '-' as tasks['my-task']"
    assert "tasks[7].when" not in found
    assert "tasks[1].when" not in found
    assert found["tasks[2].when"].hint == "add 'a' to depends"
    assert "cannot read its own result" in found["tasks[3].when"].message
    assert "syntax error" in found["tasks[4].when"].message


def test_map_over_must_be_exactly_one_reference():
    found = problems(
        dag(
            task("a"),
            task("b", depends=["a"], map={"over": "{{ tasks.a.output }} and more"}),
            task("c", map={"over": "{{ item }}"}),
            task("d", map={"over": "{{ tasks.a.output }}"}),
            task("e", map={"over": "{{ tasks.a }}"}),
        )
    )
    assert "is not exactly one reference" in found["tasks[1].map.over"].message
    assert "cannot iterate over its own item" in found["tasks[2].map.over"].message
    assert found["tasks[3].map.over"].hint == "add 'a' to depends"
    assert "tasks.a.output" in found["tasks[4].map.over"].message


def test_limits_are_enforced():
    limits = spec.Limits(max_tasks=3, max_payload_bytes=1024, max_retries=2, max_fanout=5)
    assert "4 tasks is above the limit of 3" in problems(
        dag(*(task(f"t{i}") for i in range(4))), limits
    )["tasks"].message
    found = problems(
        dag(
            task("a", args=["x" * 2000], retries={"limit": 3}),
            task("b", map={"over": "{{ params.p }}", "max_items": 6}, args=[float("nan")]),
            params={"p": "y" * 2000},
        ),
        limits,
    )
    assert "encodes to more than 1024 bytes" in found["params"].message
    assert "encodes to more than 1024 bytes" in found["tasks[0].args"].message
    assert "is not valid JSON" in found["tasks[1].args"].message
    assert found["tasks[0].retries.limit"].hint == "use at most 2"
    assert found["tasks[1].map.max_items"].hint.startswith("use at most 5")


def test_problem_and_error_render():
    problem = validation.Problem("tasks[0].fn", "bad", "fix it")
    assert problem.to_dict() == {"path": "tasks[0].fn", "message": "bad", "hint": "fix it"}
    error = validation.SpecError([problem])
    assert str(error) == "invalid DAG: 1 problem\n  tasks[0].fn: bad\n    hint: fix it"
    assert json.dumps([p.to_dict() for p in error.problems])


def test_merge_params():
    d = validation.parse_dag(dag(task("a"), params={"day": "x", "n": 1}))
    assert validation.merge_params(d, {"n": 2}) == {"day": "x", "n": 2}
    assert validation.merge_params(d, {}) == {"day": "x", "n": 1}
    with pytest.raises(validation.SpecError) as err:
        validation.merge_params(d, {"dya": "y", "odd key": 1}, spec.Limits(max_payload_bytes=1024))
    found = {p.path: p for p in err.value.problems}
    assert found["params.dya"].hint == "did you mean 'day'? declared params: day, n"
    assert 'params["odd key"]' in found
    with pytest.raises(validation.SpecError, match="more than 1024 bytes"):
        validation.merge_params(d, {"day": "z" * 2000}, spec.Limits(max_payload_bytes=1024))


def test_a_long_chain_validates():
    # Every task reads the first one's output: the upstream check must not be quadratic in time.
    n = 3_000
    tasks = [task("t0")] + [
        task(f"t{i}", depends=[f"t{i - 1}"], args=["{{ tasks.t0.output }}"]) for i in range(1, n)
    ]
    assert len(validation.parse_dag(dag(*tasks)).tasks) == n


@st.composite
def random_dags(draw):
    """Acyclic DAGs whose tasks depend on (and read) random earlier tasks."""
    n = draw(st.integers(1, 12))
    tasks = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        reads = [f"{{{{ tasks.t{d}.output.k }}}}" for d in deps]
        when = f"tasks.t{deps[0]}.status == 'succeeded'" if deps and draw(st.booleans()) else None
        tasks.append(task(f"t{i}", depends=[f"t{d}" for d in deps], args=reads, when=when))
    return tasks


@given(random_dags())
def test_random_acyclic_dags_validate(tasks):
    result = validation.parse_dag(dag(*tasks))
    assert [t.name for t in result.tasks] == [t["name"] for t in tasks]


@given(random_dags(), st.data())
def test_a_back_edge_is_reported_as_a_cycle(tasks, data):
    edges = [(i, int(d[1:])) for i, t in enumerate(tasks) for d in t["depends"]]
    if not edges:
        return
    child, parent = data.draw(st.sampled_from(edges))
    tasks[parent]["depends"].append(f"t{child}")  # parent now also depends on its child
    found = problems(dag(*tasks))
    cycles = [p for p in found.values() if p.message.startswith("dependency cycle")]
    assert cycles
    loop = cycles[0].message.split(": ")[1].split(" (")[0].split(" -> ")
    assert loop[0] == loop[-1]
    for a, b in zip(loop, loop[1:]):  # each named edge exists: a depends on b
        assert b in tasks[int(a[1:])]["depends"]
