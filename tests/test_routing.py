"""The router and resource quantities, as properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from flowforge.domain import routing, spec

POOLS = {"default": routing.SlotShape(capacity=8, cpu=Decimal(1), memory=Decimal(2**30)),
         "empty": routing.SlotShape(capacity=0)}
cpus = st.one_of(st.none(), st.integers(0, 64), st.sampled_from(["100m", "500m", "1", "1500m", "2", "0.25"]))
memories = st.one_of(st.none(), st.sampled_from(["64Mi", "512Mi", "1Gi", "1025Mi", "2Gi", "100M", "3G"]))


@st.composite
def tasks(draw: st.DrawFn) -> spec.TaskSpec:
    image = draw(st.one_of(st.none(), st.just("busybox")))
    return spec.TaskSpec(
        name="t", fn=None if image else "m:f", image=image, executor=draw(st.sampled_from(["light", "heavy", "auto"])),
        pool=draw(st.sampled_from(["default", "empty", "nowhere"])),
        resources=spec.Resources(cpu=draw(cpus), memory=draw(memories), gpu=draw(st.sampled_from([0, 0, 1, 2]))),
    )


@given(tasks())
def test_every_task_gets_a_route_and_a_reason(task):
    chosen = routing.route(task, POOLS)
    assert chosen.executor in ("light", "heavy") and chosen.reason
    if task.executor != "auto":
        assert chosen.executor == task.executor  # a declared executor is obeyed
    elif task.image or task.resources.gpu or task.pool != "default":
        assert chosen.executor == "heavy"


@given(tasks(), st.integers(1, 64))
def test_asking_for_more_never_moves_a_heavy_task_back(task, more):
    if task.executor != "auto" or routing.route(task, POOLS).executor != "heavy" or task.resources.cpu is None:
        return
    bigger = task.model_copy(update={"resources": task.resources.model_copy(
        update={"cpu": str(routing.quantity(task.resources.cpu) + more)})})
    assert routing.route(bigger, POOLS).executor == "heavy"


def test_auto_fits_a_slot_or_says_why_not():
    def auto(**resources: object) -> routing.Route:
        return routing.route(spec.TaskSpec(name="t", fn="m:f", executor="auto", resources=resources), POOLS)

    assert auto() == routing.Route("light", "fits a slot of pool 'default'")
    assert auto(cpu="1000m", memory="1Gi") == routing.Route("light", "fits a slot of pool 'default'")
    assert auto(cpu="1001m").reason == "requests 1001m CPU; a slot of pool 'default' offers 1"
    assert auto(memory="1025Mi").reason == "requests 1025Mi memory; a slot of pool 'default' offers 1Gi"
    assert routing.route(spec.TaskSpec(name="t", fn="m:f", executor="auto", pool="x"), None).executor == "light"


@given(st.integers(0, 10**6), st.sampled_from(list(routing._FACTORS)))
def test_quantities_parse_as_kubernetes_writes_them(n, suffix):
    assert routing.quantity(f"{n}{suffix or ''}") == n * routing._FACTORS[suffix]


@pytest.mark.parametrize("bad", ["", "lots", "1.5.2", "-1", "1Gb", "1 Gi", "Mi", True])
def test_bad_quantities_name_the_fix(bad):
    with pytest.raises(ValueError, match="quantity"):
        routing.quantity(bad)
