"""Task output as users read it: `GET /runs/{id}/logs` pages, and the live SSE stream that a
real SSE client follows, resumes with Last-Event-ID, and sees end when the run ends."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from flowforge.client import Client as FlowForgeClient

CHATTY = {"name": "chatty", "tasks": [{"name": "talk", "fn": "tests.tasks:chatty", "args": [10_000]}]}


def _submit(api, dag, params=None) -> str:
    r = api.post("/api/v1/runs", json={"dag": dag, "params": params or {}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _follow(api, run_id: str, *, last_event_id: str | None = None, stop_after: int | None = None,
            params: dict | None = None) -> tuple[list[dict], str | None, bool]:
    """Lines received, the last event id, and whether the stream ended with `end`."""
    headers = {"Authorization": f"Bearer {api.token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    got: list[dict] = []
    last = last_event_id
    with httpx.Client(base_url=api.base_url, timeout=60) as http:
        with connect_sse(http, "GET", f"/api/v1/runs/{run_id}/logs",
                         params={"follow": "true", **(params or {})}, headers=headers) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                if sse.event == "end":
                    return got, last, True
                assert sse.event == "line"
                line = json.loads(sse.data)
                assert sse.id == str(line["pos"])
                got.append(line)
                last = sse.id
                if stop_after is not None and len(got) >= stop_after:
                    return got, last, False  # disconnect mid-stream
    return got, last, False


def test_a_follower_gets_10000_lines_once_in_order_across_a_resume(api):
    run_id = _submit(api, CHATTY)
    first, last, ended = _follow(api, run_id, stop_after=3000)
    assert not ended and len(first) == 3000
    rest, _, ended = _follow(api, run_id, last_event_id=last)
    assert ended, "the stream ends when the run ends"
    lines = [x["line"] for x in first + rest if x["stream"] == "stdout"]
    assert lines == [f"line {i}" for i in range(10_000)]
    positions = [x["pos"] for x in first + rest]
    assert positions == sorted(set(positions)), "no line twice, none out of order"
    assert api.wait(run_id)["status"] == "succeeded"


def test_after_the_run_the_stream_replays_from_the_store_and_ends(api):
    run_id = _submit(api, CHATTY)
    api.wait(run_id)
    got, _, ended = _follow(api, run_id)
    assert ended
    assert [x["line"] for x in got] == [f"line {i}" for i in range(10_000)]
    # A resume near the end starts right after the given line.
    tail, _, ended = _follow(api, run_id, last_event_id=str(got[-5]["pos"]))
    assert ended and [x["pos"] for x in tail] == [x["pos"] for x in got[-4:]]


def test_pages_of_lines_and_filters(api):
    dag = {"name": "two", "tasks": [
        {"name": "a", "fn": "tests.tasks:chatty", "args": [300, 0]},
        {"name": "b", "fn": "tests.tasks:logs_a_little"},
    ]}
    run_id = _submit(api, dag)
    api.wait(run_id)
    seen, after = [], 0
    while True:
        r = api.get(f"/api/v1/runs/{run_id}/logs", params={"after": after, "limit": 128})
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["run_status"] == "succeeded"
        if not page["items"]:
            break
        seen += page["items"]
        after = page["next_after"]
    assert len(seen) == 300 + 4
    assert [x["pos"] for x in seen] == list(range(1, len(seen) + 1))
    only_b = api.get(f"/api/v1/runs/{run_id}/logs", params={"task": "b"}).json()["items"]
    assert {(x["stream"], x["line"]) for x in only_b} == {
        ("stdout", "to stdout"), ("log", "INFO tests.tasks: an info record"),
        ("log", "WARNING tests.tasks: a warning record"), ("stderr", "to stderr"),
    }
    assert api.get(f"/api/v1/runs/{run_id}/logs", params={"task": "b", "attempt": 2}).json()["items"] == []


def test_the_cli_client_follows_and_pages(api):
    run_id = _submit(api, {"name": "small", "tasks": [{"name": "t", "fn": "tests.tasks:chatty", "args": [50, 0]}]})
    client = FlowForgeClient(api.base_url, api.token)
    followed = list(client.follow_logs(run_id))
    assert followed[-1] == {"end": "succeeded"}
    assert [x["line"] for x in followed[:-1]] == [f"line {i}" for i in range(50)]
    assert [x["line"] for x in client.logs(run_id)["items"]] == [f"line {i}" for i in range(50)]


def test_tickets_open_one_run_for_a_short_while(api, other_api, stack):
    run_id = _submit(api, {"name": "small", "tasks": [{"name": "t", "fn": "tests.tasks:chatty", "args": [20, 0]}]})
    other_run = _submit(api, {"name": "small", "tasks": [{"name": "t", "fn": "tests.tasks:chatty", "args": [1, 0]}]})
    api.wait(run_id)
    r = api.post(f"/api/v1/runs/{run_id}/logs/ticket")
    assert r.status_code == 200, r.text
    ticket = r.json()["ticket"]
    anonymous = httpx.Client(base_url=api.base_url, timeout=30)
    page = anonymous.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": ticket})
    assert page.status_code == 200 and len(page.json()["items"]) == 20
    for params, status in (
        ({"ticket": ticket}, 401),  # for another run
        ({"ticket": ticket[:-2] + ("A" if ticket[-2] != "A" else "B") + ticket[-1]}, 401),  # tampered
        ({}, 401),  # nothing
    ):
        got = anonymous.get(f"/api/v1/runs/{other_run if params else run_id}/logs", params=params)
        assert got.status_code == status, (params, got.text)
        assert got.headers["content-type"].startswith("application/problem+json")
    forged = anonymous.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": ticket[:-3] + "abc"})
    assert forged.status_code == 401
    # Another tenant can neither read the run nor get a ticket for it.
    assert other_api.get(f"/api/v1/runs/{run_id}/logs").status_code == 404
    assert other_api.post(f"/api/v1/runs/{run_id}/logs/ticket").status_code == 404
    # A ticket expires.
    from flowforge.api import tickets

    ctx = stack.stack.api_context
    old = tickets.issue(ctx.ticket_key, tickets.verify(ctx.ticket_key, ticket, run_id), run_id, 1.0,
                        now=time.time() - 10)
    assert anonymous.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": old}).status_code == 401


def test_a_bad_last_event_id_is_a_clear_422(api):
    run_id = _submit(api, {"name": "small", "tasks": [{"name": "t", "fn": "tests.tasks:noop"}]})
    r = api.get(f"/api/v1/runs/{run_id}/logs", params={"follow": "true"}, headers={"Last-Event-ID": "abc"})
    assert r.status_code == 422
    assert "last-event-id" in r.text.lower()


def test_a_ticket_stops_working_with_its_token(api, stack):
    """Revoking (or expiry of) the token a ticket was issued to ends the ticket too: at once on
    the API process that revoked it."""
    run_id = _submit(api, {"name": "small", "tasks": [{"name": "t", "fn": "tests.tasks:chatty", "args": [3, 0]}]})
    api.wait(run_id)
    made = api.post("/api/v1/tenants/default/tokens", json={"name": "viewer-for-tickets", "role": "viewer"})
    assert made.status_code == 201, made.text
    viewer = httpx.Client(base_url=api.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {made.json()['token']}"})
    ticket = viewer.post(f"/api/v1/runs/{run_id}/logs/ticket").json()["ticket"]
    anonymous = httpx.Client(base_url=api.base_url, timeout=30)
    assert anonymous.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": ticket}).status_code == 200
    assert api.delete(f"/api/v1/tenants/default/tokens/{made.json()['id']}").status_code == 204
    refused = anonymous.get(f"/api/v1/runs/{run_id}/logs", params={"ticket": ticket})
    assert refused.status_code == 401, refused.text
    assert "revoked or expired" in refused.json()["detail"]
    assert viewer.get(f"/api/v1/runs/{run_id}/logs").status_code == 401  # and the token itself
    catalog = stack.stack.catalog
    assert stack.call(catalog.token_active(made.json()["id"])) is False
    assert stack.call(catalog.token_active("not-a-token-id")) is False
