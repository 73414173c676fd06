"""The Python SDK: decorated tasks, the DAG builder, references and the attempt context."""

import asyncio
import contextvars
import inspect
import json
import pickle
import threading

import pytest

from flowforge import sdk
from flowforge.domain import expressions, spec, validation

CALLS = []


@sdk.task
def extract(day):
    CALLS.append(("extract", day))
    return {"files": [f"{day}/a", f"{day}/b"], "count": 2}


@sdk.task(retries=3, timeout_seconds=60, pool="io", executor="heavy")
def load(path, mode="append"):
    CALLS.append(("load", path))
    return path


@sdk.task(name="summarise")
async def report(total, *, title="report"):
    return f"{title}: {total}"


@sdk.task
def no_args():
    return 1


@sdk.task
def star_kwargs(**kwargs):
    return kwargs


def by_name(d, name):
    return next(t for t in d.to_dict()["tasks"] if t["name"] == name)


MOD = extract.__module__


def test_outside_a_dag_a_task_is_the_plain_function():
    CALLS.clear()
    assert extract("d1") == {"files": ["d1/a", "d1/b"], "count": 2}
    assert load("p", mode="x") == "p"
    assert CALLS == [("extract", "d1"), ("load", "p")]
    assert extract.__name__ == "extract" and extract.__module__ == MOD
    assert extract.__wrapped__.__name__ == "extract"
    assert inspect.signature(load) == inspect.signature(load.__wrapped__)


def test_async_tasks_stay_coroutine_functions():
    assert inspect.iscoroutinefunction(report)
    assert asyncio.iscoroutinefunction(report)
    assert not inspect.iscoroutinefunction(extract)
    coro = report(3, title="t")
    assert inspect.iscoroutine(coro)
    assert asyncio.run(coro) == "t: 3"


def test_tasks_pickle_by_reference_like_functions():
    assert pickle.loads(pickle.dumps(extract)) is extract


def test_calls_inside_a_dag_record_tasks_without_running_them():
    CALLS.clear()
    with sdk.DAG("etl", params={"day": "2024-01-01"}, description="daily") as dag:
        files = extract(dag.param("day"))
        loaded = load(path=files.output["files"][0], mode="replace")
        summary = report(total=files.output.count, title=f"{dag.param('day')} done")
    assert CALLS == []
    assert isinstance(files, sdk.TaskRef) and files.name == "extract"
    assert (loaded.name, summary.name) == ("load", "summarise")
    d = dag.to_dict()
    assert d["name"] == "etl" and d["description"] == "daily"
    assert d["tasks"][0] == {"name": "extract", "fn": f"{MOD}:extract", "args": ["{{ params.day }}"]}
    assert d["tasks"][1] == {
        "name": "load",
        "fn": f"{MOD}:load",
        "args": {"path": "{{ tasks.extract.output.files.0 }}", "mode": "replace"},
        "depends": ["extract"],
        "retries": {"limit": 3},
        "timeout_seconds": 60.0,
        "executor": "heavy",
        "pool": "io",
    }
    assert d["tasks"][2]["args"] == {
        "total": "{{ tasks.extract.output.count }}",
        "title": "{{ params.day }} done",
    }
    assert d["tasks"][2]["depends"] == ["extract"]


def test_spec_round_trips_through_json():
    with sdk.DAG("etl", params={"day": "x"}) as dag:
        f = extract(dag.param("day"))
        load.map(f.output.files, max_items=10)
    parsed = validation.parse_dag(json.loads(dag.to_json()))
    assert parsed == dag.to_spec()
    assert isinstance(parsed, spec.DagSpec)


def test_strings_with_references_add_depends_too():
    with sdk.DAG("d") as dag:
        a = extract("x")
        load(f"s3://{a.output.files}/done", "{{ tasks.extract.output.count }}")
    assert by_name(dag, "load")["depends"] == ["extract"]
    assert by_name(dag, "load")["args"][0] == "s3://{{ tasks.extract.output.files }}/done"


def test_nested_literals_are_converted_and_task_refs_stand_for_their_output():
    with sdk.DAG("d") as dag:
        a = extract("x")
        b = extract("y")
        load({"a": [a, {"deep": (b.output.count, None, 1.5, True)}]})
    assert by_name(dag, "load")["args"] == [
        {"a": ["{{ tasks.extract.output }}", {"deep": ["{{ tasks.extract_2.output.count }}", None, 1.5, True]}]}
    ]
    assert by_name(dag, "load")["depends"] == ["extract", "extract_2"]


def test_names_are_unique_and_explicit_names_must_be():
    with sdk.DAG("d") as dag:
        names = [extract("x").name for _ in range(3)]
        renamed = extract.options(name="extract_4")("x")
        after = extract("x")
        with pytest.raises(ValueError, match="already has a task named 'extract'"):
            extract.options(name="extract")("x")
    assert names == ["extract", "extract_2", "extract_3"]
    assert renamed.name == "extract_4"
    assert after.name == "extract_5"
    assert [t["name"] for t in dag.to_dict()["tasks"]] == [*names, "extract_4", "extract_5"]


def test_mixing_positional_and_keyword_arguments_is_an_error():
    with sdk.DAG("d"):
        with pytest.raises(TypeError, match="either positional or keyword arguments"):
            load("p", mode="x")


def test_options_apply_per_call():
    with sdk.DAG("d") as dag:
        check = extract("x")
        other = extract("y")
        gated = load.options(
            name="gated",
            when="tasks.extract.output.count > 1",
            depends=[other, "extract_2"],
            retries=spec.RetryPolicy(limit=2, backoff="fixed"),
            timeout_seconds=5,
            pool="slow",
        )("p")
        plain = load("q")
    g = by_name(dag, "gated")
    assert g["when"] == "tasks.extract.output.count > 1"
    assert g["depends"] == ["extract_2", "extract"]  # listed ones, then those `when` reads
    assert g["retries"] == {"limit": 2, "backoff": "fixed"}
    assert (g["timeout_seconds"], g["pool"]) == (5, "slow")
    assert by_name(dag, plain.name)["pool"] == "io"  # the decorator's settings are untouched
    assert check.name == "extract" and gated.name == "gated"


def test_map_passes_the_item():
    with sdk.DAG("d", params={"paths": ["a", "b"]}) as dag:
        files = extract("x")
        load.map(files.output.files, max_items=7)
        load.map(files, mode="overwrite")
        load.map(dag.param("paths"), path=sdk.item.name, mode="m")
        report.map(files.output.files, title="t")
    tasks = dag.to_dict()["tasks"]
    assert tasks[1]["args"] == ["{{ item }}"]
    assert tasks[1]["map"] == {"over": "{{ tasks.extract.output.files }}", "max_items": 7}
    assert tasks[1]["depends"] == ["extract"]
    assert tasks[2]["args"] == {"path": "{{ item }}", "mode": "overwrite"}
    assert tasks[2]["map"]["over"] == "{{ tasks.extract.output }}"
    assert tasks[3]["args"] == {"path": "{{ item.name }}", "mode": "m"}
    assert "depends" not in tasks[3]
    assert tasks[4]["args"] == {"total": "{{ item }}", "title": "t"}


def test_map_needs_a_dag_and_a_place_for_the_item():
    with pytest.raises(RuntimeError, match="inside `with DAG"):
        load.map(sdk.item)
    with sdk.DAG("d", params={"p": [1]}) as dag:
        with pytest.raises(TypeError, match="pass sdk.item"):
            star_kwargs.map(dag.param("p"), x=1)
        with pytest.raises(TypeError, match="pass sdk.item"):
            no_args.map(dag.param("p"), x=1)


def test_references_chain_and_refuse_build_time_use():
    with sdk.DAG("d") as dag:
        ref = extract("x").output
    assert str(ref.files[0].name) == "{{ tasks.extract.output.files.0.name }}"
    assert str(ref["a-b"]["c_d"]) == "{{ tasks.extract.output.a-b.c_d }}"
    with pytest.raises(ValueError, match="cannot be used in a reference"):
        ref["a b"]
    with pytest.raises(ValueError):
        ref[-1]
    with pytest.raises(TypeError, match="use task.map"):
        list(ref)
    with pytest.raises(TypeError, match="options\\(when="):
        bool(ref)
    with pytest.raises(AttributeError):
        ref.files = 1
    with pytest.raises(KeyError, match="declares no param 'nope'"):
        dag.param("nope")


def test_bad_arguments_fail_at_the_call():
    with sdk.DAG("d"):
        with pytest.raises(TypeError, match="a set argument cannot be sent"):
            load({1, 2})
        with pytest.raises(TypeError, match=r"pass extract\(\)"):
            load(extract)
        with pytest.raises(TypeError, match="keys must be strings"):
            load({1: "x"})
        with pytest.raises(ValueError, match="finite"):
            load(float("inf"))
        with pytest.raises(expressions.ExpressionError):
            load.options(when="tasks.x.nope")("p")


def test_references_to_another_dag_are_refused():
    with sdk.DAG("one"):
        a = extract("x")
    with sdk.DAG("two") as two:
        with pytest.raises(ValueError, match="belongs to DAG 'one'"):
            load(a)
        with pytest.raises(ValueError, match="belongs to DAG 'one'"):
            load(path=a.output.files)
    assert two._tasks == []


def test_dags_nest_and_restore_the_outer_builder():
    with sdk.DAG("outer") as outer:
        extract("x")
        with sdk.DAG("inner") as inner:
            extract("y")
        extract("z")
    assert [t["args"] for t in outer.to_dict()["tasks"]] == [["x"], ["z"]]
    assert [t["args"] for t in inner.to_dict()["tasks"]] == [["y"]]
    assert extract("w")["count"] == 2  # outside again: the plain function


def test_to_spec_reports_every_problem():
    with sdk.DAG("d") as dag:
        load.options(pool="bad pool", depends=["ghost"])("p")
        load.options(when="tasks.summarise.status == 'succeeded'")("q")
    with pytest.raises(validation.SpecError) as err:
        dag.to_spec()
    paths = {p.path for p in err.value.problems}
    assert {"tasks[0].pool", "tasks[0].depends[0]", "tasks[1].when"} <= paths
    with pytest.raises(validation.SpecError, match="the DAG has no tasks"):
        sdk.DAG("empty").to_spec()


def _nested_factory():
    def inner():
        return 1

    return inner


class _Holder:
    def method(self):
        return 1


def test_only_module_level_functions_can_be_tasks():
    with pytest.raises(TypeError, match="nested"):
        sdk.task(_nested_factory())
    with pytest.raises(TypeError, match="lambda"):
        sdk.task(lambda: 1)
    with pytest.raises(TypeError, match="nested"):
        sdk.task(_Holder.method)
    with pytest.raises(TypeError, match="functions, not"):
        sdk.task(len)
    with pytest.raises(TypeError, match="retries is an int"):
        sdk.task(retries="3")(extract.__wrapped__)


def _ctx(event):
    return sdk.TaskContext(
        run_id="r1",
        task="load",
        attempt=2,
        tenant="acme",
        map_index=None,
        cancelled=event,
    )


def test_attempt_context():
    with pytest.raises(RuntimeError, match="not running inside a FlowForge attempt"):
        sdk.context()
    assert sdk.cancelled() is False
    event = threading.Event()
    token = sdk._set_context(_ctx(event))
    try:
        assert sdk.context().attempt == 2 and sdk.context().tenant == "acme"
        assert sdk.cancelled() is False
        event.set()
        assert sdk.cancelled() is True
        # A fresh context (another thread, another task) does not see this attempt.
        assert contextvars.Context().run(sdk.cancelled) is False
    finally:
        sdk._reset_context(token)
    with pytest.raises(RuntimeError):
        sdk.context()


@sdk.task(executor="auto", resources={"cpu": 4, "memory": "8Gi"})
def train(rows: int) -> int:
    return rows


def test_heavy_options_reach_the_spec():
    with sdk.DAG("heavy-sdk") as dag:
        train.options(name="gpu", resources={"gpu": 1}, node_selector={"accelerator": "a100"},
                      tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}], env={"MODE": "fast"})(1)
        train(2)
    tasks = {t["name"]: t for t in dag.to_dict()["tasks"]}
    assert tasks["train"]["resources"] == {"cpu": 4, "memory": "8Gi"} and tasks["train"]["executor"] == "auto"
    assert tasks["gpu"]["resources"] == {"gpu": 1} and tasks["gpu"]["node_selector"] == {"accelerator": "a100"}
    assert tasks["gpu"]["env"] == {"MODE": "fast"} and tasks["gpu"]["tolerations"][0]["key"] == "nvidia.com/gpu"
