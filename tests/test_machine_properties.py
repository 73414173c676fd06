"""Property tests of the pure state machine: random DAGs, random outcomes, duplicated and
stale events, cancellation, run retries, fan-outs made a few instances per step and reloads from
the stored rows always end in a terminal state that obeys the rules."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowforge.domain import machine, model, spec
from flowforge.domain.model import TIMER_EXPAND, TIMER_RETRY
from flowforge.domain.states import (
    RUN_TERMINAL,
    TASK_TERMINAL,
    RunStatus,
    TaskStatus,
    run_transition_allowed,
    task_transition_allowed,
)

S = TaskStatus


@st.composite
def dags(draw) -> spec.DagSpec:
    n = draw(st.integers(1, 7))
    tasks = []
    for i in range(n):
        depends = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        ups = [f"t{j}" for j in depends]
        task: dict = {"name": f"t{i}", "fn": "m:f", "depends": ups,
                      "retries": {"limit": draw(st.integers(0, 2)), "base_seconds": 1, "jitter": 0.5}}
        if ups and draw(st.booleans()):
            task["when"] = f"tasks.{ups[0]}.output > {draw(st.integers(0, 9))}"
        if draw(st.integers(0, 5)) == 0:
            task["map"] = {"over": "{{ params.items }}", "max_items": 3}
            task["args"] = ["{{ item }}"]
        tasks.append(task)
    return spec.DagSpec.model_validate({"name": "prop", "params": {"items": ITEMS}, "tasks": tasks})


ITEMS = [1, 2, 3]
# A fan-out made at most this many instances per step (0: all at once).
chunks = st.sampled_from([0, 1, 2])


@dataclass
class World:
    run: model.Run
    config: machine.Config = machine.Config()
    now: float = 0.0
    events: int = 0

    def reload(self) -> None:
        """Hold the run as a coordinator would after loading it from its rows."""
        r = self.run
        self.run = model.Run.restore(
            run_id=r.run_id, tenant=r.tenant, dag=r.dag, params=r.params, status=r.status,
            cancel_requested=r.cancel_requested, tasks=list(r.tasks.values()), error=r.error, retries=r.retries,
        )

    def step(self, event: machine.Event) -> list[machine.Effect]:
        before_run = self.run.status
        before = dict(self.run.tasks)
        effects = machine.advance(self.run, event, self.now, self.config)
        self.events += 1
        for fx in effects:
            if isinstance(fx, machine.TaskChanged) and fx.before is not None:
                old = before.get(fx.after.key, fx.before)
                assert fx.before == old or fx.before.key == old.key
                if fx.before.status != fx.after.status:
                    assert task_transition_allowed(fx.before.status, fx.after.status), (fx.before, fx.after)
                assert fx.after.attempt >= fx.before.attempt
        changes = [fx for fx in effects if isinstance(fx, machine.RunChanged)]
        for fx in changes:  # a retry may pass through running to an end in one step
            assert run_transition_allowed(fx.before, fx.after), (fx.before, fx.after)
        assert [before_run, *(fx.after for fx in changes)][-1] == self.run.status
        # The O(1) counters agree with a full count.
        assert self.run.open_tasks == sum(1 for t in self.run.tasks.values() if t.status not in TASK_TERMINAL)
        return effects


def _active(run: model.Run) -> list[model.Task]:
    return [t for t in run.tasks.values() if t.status in (S.QUEUED, S.RUNNING) and t.attempt > 0]


def drive(world: World, data, *, allow_cancel: bool) -> None:
    world.step(machine.Start())
    history: list[machine.Event] = []
    for _ in range(400):
        if data.draw(st.integers(0, 9), label="reload") == 0:
            world.reload()
        run = world.run
        if run.status in RUN_TERMINAL:
            break
        choices = []
        for t in _active(run):
            if t.status == S.QUEUED:
                choices.append(machine.Started(t.key, t.attempt, "agent"))
            ok = data.draw(st.booleans(), label=f"ok {t.key}#{t.attempt}")
            reason = "error" if ok else data.draw(st.sampled_from(["error", "infrastructure"]), label="reason")
            choices.append(machine.Finished(t.key, t.attempt, ok=ok, output=data.draw(st.integers(0, 9)) if ok else None,
                                            error=None if ok else "boom", reason=reason))
        for t in run.tasks.values():
            if t.timer is not None:
                choices.append(machine.TimerDue(t.key, t.attempt, t.timer))
        if allow_cancel:
            choices.append(machine.Cancel())
        if history:
            choices.append(data.draw(st.sampled_from(history), label="replay"))
        assert choices, f"stuck: {[(t.key, t.status) for t in run.tasks.values()]}"
        event = data.draw(st.sampled_from(choices), label="event")
        if isinstance(event, machine.TimerDue):
            world.now = max(world.now, next(t for t in run.tasks.values() if t.key == event.key).timer_at or 0)
        world.now += 0.01
        replayed = event in history
        snapshot = {k: t for k, t in run.tasks.items()}
        effects = world.step(event)
        if replayed and isinstance(event, (machine.Finished, machine.Started)):
            assert effects == [] and run.tasks == snapshot, "a duplicate event changed the run"
        history.append(event)
    run = world.run
    assert run.status in RUN_TERMINAL, f"run did not end: {run.status} {[(t.key, t.status) for t in run.tasks.values()]}"


def check_rules(run: model.Run) -> None:
    dag = run.dag
    for name, tspec in dag.tasks.items():
        t = run.tasks[name]
        assert t.status in TASK_TERMINAL
        ups = [run.tasks[u] for u in dag.graph.upstream[name]]
        if t.status == S.SUCCEEDED:
            assert all(u.status == S.SUCCEEDED for u in ups)
            if tspec.when:
                u = run.tasks[dag.graph.upstream[name][0]]
                assert u.output > int(tspec.when.rsplit(" ", 1)[1])
        if t.status == S.UPSTREAM_FAILED:
            assert any(u.status in (S.FAILED, S.UPSTREAM_FAILED, S.CANCELLED) for u in ups)
        if t.status == S.SKIPPED:
            assert tspec.when or any(u.status == S.SKIPPED for u in ups)
        if tspec.map is None:
            assert t.attempt - t.retry_base <= tspec.retries.limit + 1 and t.retry_base >= t.infra_failures
        else:
            for inst in run.instances(name):
                assert inst.attempt - inst.retry_base <= tspec.retries.limit + 1 and inst.retry_base >= inst.infra_failures
            if t.status == S.SUCCEEDED:  # every instance was made, ran and gave its output
                assert t.instances == len(ITEMS) and t.output == [i.output for i in run.instances(name)]
                assert len(run.instances(name)) == len(ITEMS)
            assert t.timer is None
    statuses = {t.status for t in run.tasks.values()}
    if run.cancel_requested:
        assert run.status == RunStatus.CANCELLED
    elif statuses & {S.FAILED, S.UPSTREAM_FAILED}:
        assert run.status == RunStatus.FAILED
    else:
        assert run.status == RunStatus.SUCCEEDED
        assert statuses <= {S.SUCCEEDED, S.SKIPPED}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(), data=st.data())
def test_random_dags_and_outcomes_reach_a_lawful_terminal_state(dag, data):
    world = World(model.Run.new("r1", "t", model.compile_dag(dag), {"items": ITEMS}),
                  machine.Config(expand_chunk=data.draw(chunks, label="expand chunk")))
    drive(world, data, allow_cancel=data.draw(st.booleans(), label="may cancel"))
    check_rules(world.run)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(), data=st.data())
def test_retrying_a_finished_run_reaches_a_lawful_terminal_state_again(dag, data):
    world = World(model.Run.new("r1", "t", model.compile_dag(dag), {"items": ITEMS}),
                  machine.Config(expand_chunk=data.draw(chunks, label="expand chunk")))
    drive(world, data, allow_cancel=data.draw(st.booleans(), label="may cancel"))
    first = {k: t.attempt for k, t in world.run.tasks.items()}
    if world.run.status == RunStatus.SUCCEEDED:
        assert world.step(machine.Retry()) == []  # nothing to retry
        return
    world.step(machine.Retry(0))
    assert world.run.retries == 1
    assert world.run.status == RunStatus.RUNNING or world.run.status in RUN_TERMINAL
    drive_after = world.run.status not in RUN_TERMINAL
    if drive_after:
        drive(world, data, allow_cancel=False)
    check_rules(world.run)
    for key, n in first.items():
        assert world.run.tasks[key].attempt >= n  # history kept: attempts only grow
    # The same retry relayed again, or a cancel asked before it, changes nothing any more.
    attempts = {k: (t.status, t.attempt) for k, t in world.run.tasks.items()}
    status = world.run.status
    assert world.step(machine.Retry(0)) == [] or status not in RUN_TERMINAL
    assert world.step(machine.Cancel(0)) == []
    assert world.run.status == status and world.run.retries == 1
    assert {k: (t.status, t.attempt) for k, t in world.run.tasks.items()} == attempts


def test_retry_backoff_timer_then_new_attempt():
    dag = spec.DagSpec.model_validate({"name": "d", "tasks": [
        {"name": "a", "fn": "m:f", "retries": {"limit": 1, "base_seconds": 2, "jitter": 0}}]})
    run = model.Run.new("r", "t", model.compile_dag(dag), {})
    machine.advance(run, machine.Start(), 0.0)
    fx = machine.advance(run, machine.Finished("a", 1, ok=False, error="x"), 1.0)
    timer = next(f for f in fx if isinstance(f, machine.ArmTimer))
    assert (timer.kind, timer.at) == (TIMER_RETRY, 3.0)
    assert run.tasks["a"].status == S.RETRYING
    assert machine.advance(run, machine.TimerDue("a", 0, TIMER_RETRY), 3.0) == []  # stale attempt
    fx = machine.advance(run, machine.TimerDue("a", 1, TIMER_RETRY), 3.0)
    assert run.tasks["a"].status == S.QUEUED and run.tasks["a"].attempt == 2
    assert any(isinstance(f, machine.Enqueue) for f in fx)


def test_attempts_lost_to_the_platform_do_not_spend_the_retry_budget():
    dag = spec.DagSpec.model_validate({"name": "d", "tasks": [
        {"name": "a", "fn": "m:f", "executor": "heavy", "retries": {"limit": 1, "base_seconds": 0, "jitter": 0}}]})
    run = model.Run.new("r", "t", model.compile_dag(dag), {}, heavy=frozenset({"a"}))
    cfg = machine.Config(infra_retries=2)
    fx = machine.advance(run, machine.Start(), 0.0, cfg)
    assert next(f for f in fx if isinstance(f, machine.Enqueue)).pool == model.HEAVY_POOL
    lost = dict(ok=False, reason="infrastructure", error="evicted")
    for n in (1, 2):  # evicted twice: queued again at once, the budget untouched
        fx = machine.advance(run, machine.Finished("a", n, **lost), float(n), cfg)
        assert run.tasks["a"].status == S.QUEUED and run.tasks["a"].attempt == n + 1
        assert run.tasks["a"].attempt - run.tasks["a"].retry_base == 1
    machine.advance(run, machine.Finished("a", 3, **lost), 3.0, cfg)  # over its own limit: the budget pays
    assert run.tasks["a"].status == S.RETRYING
    machine.advance(run, machine.TimerDue("a", 3, TIMER_RETRY), 4.0, cfg)
    machine.advance(run, machine.Finished("a", 4, ok=False, reason="error", error="boom"), 5.0, cfg)
    assert run.tasks["a"].status == S.FAILED and run.tasks["a"].infra_failures == 2


def _map_run(items: int) -> model.Run:
    dag = spec.DagSpec.model_validate({"name": "d", "params": {"items": list(range(items))}, "tasks": [
        {"name": "m", "fn": "m:f", "args": ["{{ item }}"], "map": {"over": "{{ params.items }}", "max_items": 100}}]})
    return model.Run.new("r", "t", model.compile_dag(dag), {"items": list(range(items))})


def _enqueued(effects: list[machine.Effect]) -> list[str]:
    return [f.task.key for f in effects if isinstance(f, machine.Enqueue)]


def test_a_large_fan_out_is_made_a_chunk_per_step_and_survives_a_reload():
    cfg = machine.Config(expand_chunk=4)
    run = _map_run(10)
    fx = machine.advance(run, machine.Start(), 0.0, cfg)
    assert _enqueued(fx) == [f"m[{i}]" for i in range(4)]
    timer = next(f for f in fx if isinstance(f, machine.ArmTimer))
    assert (timer.key, timer.kind, timer.at) == ("m", TIMER_EXPAND, 0.0)
    for i in range(4):  # the first chunk ends before the rest exist: the parent must not end
        machine.advance(run, machine.Finished(f"m[{i}]", 1, ok=True, output=i), 1.0, cfg)
    assert run.tasks["m"].status == S.RUNNING and run.status == RunStatus.RUNNING
    # A coordinator that loads the run from its rows goes on where the last one stopped.
    run = model.Run.restore(run_id="r", tenant="t", dag=run.dag, params=run.params, status=run.status,
                            cancel_requested=False, tasks=list(run.tasks.values()))
    assert _enqueued(machine.advance(run, machine.TimerDue("m", 0, TIMER_EXPAND), 2.0, cfg)) == [
        f"m[{i}]" for i in range(4, 8)]
    fx = machine.advance(run, machine.TimerDue("m", 0, TIMER_EXPAND), 3.0, cfg)
    assert _enqueued(fx) == ["m[8]", "m[9]"] and run.tasks["m"].timer is None
    assert not any(isinstance(f, machine.ArmTimer) for f in fx)
    for i in range(4, 10):
        machine.advance(run, machine.Finished(f"m[{i}]", 1, ok=True, output=i), 4.0, cfg)
    assert run.tasks["m"].status == S.SUCCEEDED and run.tasks["m"].output == list(range(10))
    assert run.status == RunStatus.SUCCEEDED


def test_a_cancel_stops_a_fan_out_half_made_and_a_run_retry_finishes_it():
    cfg = machine.Config(expand_chunk=4)
    run = _map_run(10)
    machine.advance(run, machine.Start(), 0.0, cfg)
    machine.advance(run, machine.Finished("m[0]", 1, ok=True, output=0), 1.0, cfg)
    machine.advance(run, machine.Cancel(), 1.0, cfg)
    # The queued instances are cancelled, the unmade ones never made, the old timer ignored.
    assert machine.advance(run, machine.TimerDue("m", 0, TIMER_EXPAND), 2.0, cfg) == []
    assert run.status == RunStatus.CANCELLED and run.tasks["m"].status == S.CANCELLED
    assert len(run.instances("m")) == 4
    fx = machine.advance(run, machine.Retry(0), 3.0, cfg)
    assert _enqueued(fx) == ["m[1]", "m[2]", "m[3]", "m[4]", "m[5]", "m[6]", "m[7]"]
    machine.advance(run, machine.TimerDue("m", 0, TIMER_EXPAND), 4.0, cfg)
    for i in range(1, 10):
        machine.advance(run, machine.Finished(f"m[{i}]", run.tasks[f"m[{i}]"].attempt, ok=True, output=i), 5.0, cfg)
    assert run.status == RunStatus.SUCCEEDED and run.tasks["m"].output == list(range(10))


def test_a_cancel_recorded_before_a_reload_stops_the_fan_out_at_its_next_chunk():
    cfg = machine.Config(expand_chunk=4)
    run = _map_run(10)
    machine.advance(run, machine.Start(), 0.0, cfg)
    # The API recorded a cancel; this coordinator loads the run before the cancel event arrives.
    run = model.Run.restore(run_id="r", tenant="t", dag=run.dag, params=run.params, status=run.status,
                            cancel_requested=True, tasks=list(run.tasks.values()))
    assert _enqueued(machine.advance(run, machine.TimerDue("m", 0, TIMER_EXPAND), 1.0, cfg)) == []
    assert len(run.instances("m")) == 4 and run.tasks["m"].timer is None
    machine.advance(run, machine.Cancel(), 1.0, cfg)
    assert run.status == RunStatus.CANCELLED and run.tasks["m"].status == S.CANCELLED
