"""Every example DAG runs end to end and ends as it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples import sdk_pipeline
from flowforge.domain import validation

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_yaml_example_succeeds(client, name):
    dag = validation.load_text((EXAMPLES / name).read_text())
    run = client.wait(client.submit(dag), timeout=120)
    assert run["status"] == "succeeded", (name, run["error"])


def test_branch_example_takes_one_path(client):
    run = client.wait(client.submit(validation.load_text((EXAMPLES / "branch.yaml").read_text())))
    assert client.task(run, "publish")["status"] == "succeeded"
    assert client.task(run, "quarantine")["status"] == "skipped"


def test_flaky_example_needs_three_attempts(client):
    run = client.wait(client.submit(validation.load_text((EXAMPLES / "flaky.yaml").read_text())), timeout=60)
    assert [a["status"] for a in client.task(run, "call")["attempts"]] == ["failed", "failed", "succeeded"]


def test_sdk_example_runs_as_json(client):
    spec = sdk_pipeline.build().to_dict()
    run = client.wait(client.submit(spec))
    assert run["status"] == "succeeded"
    assert client.task(run, "load")["output"] == "20 rows into analytics.numbers"
