"""Edges of the REST API a careful client (or a hostile one) reaches: ids written in other UUID
forms, strings Postgres cannot store, non-UTF-8 bodies, racing writers, relayed duplicate
commands, and a database that is down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import httpx
import pytest

from flowforge import wire

DAG = {"name": "edges", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}


def _status(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def test_a_run_id_in_any_uuid_form_names_the_same_run(api):
    run_id = _status(api.post("/api/v1/runs", json={"dag": DAG}), 201)["id"]
    api.wait(run_id)
    hexed = uuid.UUID(run_id).hex
    for form in (run_id.upper(), "{" + run_id + "}", f"urn:uuid:{run_id}", hexed):
        assert _status(api.get(f"/api/v1/runs/{form}"), 200)["id"] == run_id
        # The run succeeded: retry and cancel are refused for that run, not silently accepted.
        assert "succeeded" in _status(api.post(f"/api/v1/runs/{form}/retry"), 409)["detail"]
        assert "succeeded" in _status(api.post(f"/api/v1/runs/{form}/cancel"), 409)["detail"]
    for junk in ("urn:isbn:123", "0" * 31, "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"):
        body = _status(api.get(f"/api/v1/runs/{junk}"), 404)
        assert "UUID" in body["detail"]
        _status(api.post(f"/api/v1/runs/{junk}/cancel"), 404)


@pytest.mark.parametrize("raw, path", [
    (b'{"dag": {"name": "x", "tasks": []}, "params": {"p": "\\ud800"}}', "body.params.p"),
    (b'{"dag": {"name": "x", "tasks": [{"name": "a", "fn": "m:f", "args": ["ok", "\\udfff"]}]}}',
     "body.dag.tasks[0].args[1]"),
    (b'{"dag": {"name": "x", "tasks": []}, "params": {"\\ud83d": 1}}', "body.params.\ud83d"),
    (b'{"params": {"k": "a\\u0000b"}, "name": "x"}', "body.params.k"),
])
def test_strings_postgres_cannot_store_are_422_naming_the_field(api, raw, path):
    r = api.post("/api/v1/runs", content=raw, headers={"content-type": "application/json"})
    body = _status(r, 422)
    assert r.headers["content-type"].startswith("application/problem+json")
    err = body["errors"][0]
    assert err["path"].encode("utf-8", "surrogatepass") == path.encode("utf-8", "surrogatepass")
    assert err["hint"]


def test_a_surrogate_pair_is_just_an_emoji(api):
    raw = b'{"dag": {"name": "emoji", "tasks": [{"name": "a", "fn": "tests.tasks:const", "args": ["\\ud83d\\ude00"]}]}}'
    run_id = _status(api.post("/api/v1/runs", content=raw, headers={"content-type": "application/json"}), 201)["id"]
    run = api.wait(run_id)
    assert run["status"] == "succeeded" and run["tasks"][0]["output"] == "\U0001F600"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
def test_a_body_that_is_not_utf8_is_400(api, encoding):
    raw = '{"dag": {"name": "caf\u00e9", "tasks": []}}'.encode(encoding)
    body = _status(api.post("/api/v1/runs", content=raw, headers={"content-type": "application/json"}), 400)
    assert body["errors"][0]["path"] == "body" and "UTF-8" in body["errors"][0]["hint"]


def test_concurrent_creates_of_one_template_store_one_version(api):
    name = f"race-{uuid.uuid4().hex[:8]}"
    specs = [{"name": name, "description": f"writer {i}", "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}
             for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda s: api.post("/api/v1/dags", json=s).status_code, specs))
    assert codes == [201] + [409] * 7
    assert _status(api.get(f"/api/v1/dags/{name}"), 200)["versions"] == [1]


def test_put_compares_specs_as_json_so_1_and_true_differ(api):
    name = f"typed-{uuid.uuid4().hex[:8]}"
    base = {"name": name, "params": {"flag": 1}, "tasks": [{"name": "a", "fn": "tests.tasks:noop"}]}
    first = _status(api.put(f"/api/v1/dags/{name}", json=base), 201)
    assert first["version"] == 1 and first["stored"] is True
    same = _status(api.put(f"/api/v1/dags/{name}", json=base), 200)
    assert same["version"] == 1 and same["stored"] is False
    changed = _status(api.put(f"/api/v1/dags/{name}", json={**base, "params": {"flag": True}}), 200)
    assert changed["version"] == 2 and changed["stored"] is True
    assert changed["spec"]["params"]["flag"] is True
    assert _status(api.get(f"/api/v1/dags/{name}", params={"version": 1}), 200)["spec"]["params"]["flag"] == 1


def test_a_relayed_retry_or_cancel_applies_once(api, stack):
    """The outbox relays at least once: a command published again after the run moved on to a
    later generation must not retry (or cancel) that generation."""
    failing = {"name": "relayed", "tasks": [{"name": "f", "fn": "tests.tasks:boom"}]}
    run_id = _status(api.post("/api/v1/runs", json={"dag": failing}), 201)["id"]
    assert api.wait(run_id)["status"] == "failed"
    _status(api.post(f"/api/v1/runs/{run_id}/retry"), 202)
    run = api.wait(run_id, until=lambda r: r["status"] == "failed" and len(r["tasks"][0]["attempts"]) == 2)

    async def relay(kind: str, generation: int) -> None:
        from flowforge import keys

        queue = stack.stack.queue
        partition = keys.partition_of(run_id, stack.stack.cfg.coordinator.partitions)
        await queue.publish_events([(partition, wire.pack(kind, run=run_id, tenant="default", n=generation))])

    stack.call(relay(wire.RUN_RETRY, 0))  # the first retry, relayed again
    stack.call(relay(wire.RUN_CANCEL, 0))
    marker = _status(api.post("/api/v1/runs", json={"dag": DAG}), 201)["id"]
    api.wait(marker)  # events are handled in order per partition; give them time either way
    import time

    time.sleep(0.5)
    again = api.wait(run_id)
    assert again["status"] == "failed" and len(again["tasks"][0]["attempts"]) == 2, again
    # A retry asked for now names the current generation and applies.
    _status(api.post(f"/api/v1/runs/{run_id}/retry"), 202)
    run = api.wait(run_id, until=lambda r: r["status"] == "failed" and len(r["tasks"][0]["attempts"]) == 3)
    assert [a["number"] for a in run["tasks"][0]["attempts"]] == [1, 2, 3]


def test_postgres_down_answers_503_with_retry_after(redis_url):
    """Every route that needs Postgres answers 503 (retry later), never 500."""
    from flowforge.api.app import create_app
    from flowforge.api.context import ApiContext
    from flowforge.backends import redis_streams
    from flowforge.backends.postgres import catalog, store as pg_store
    from flowforge.engine.submission import Submitter
    from flowforge.ports import Principal

    async def main() -> list[tuple[str, int, str | None]]:
        store = pg_store.PostgresStore.connect("postgresql://nobody@127.0.0.1:1/none", pool_size=1)
        queue = redis_streams.RedisQueue.connect(redis_url)
        cat = catalog.Catalog(store.engine)

        async def readiness() -> dict[str, str]:
            return {"postgres": "down", "redis": "ok"}

        ctx = ApiContext(cat, Submitter(store, cat, queue, partitions=1), readiness)
        ctx._tokens["cached"] = (Principal("default", "t1", "admin"), float("inf"))
        app = create_app(ctx)
        seen = []
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
                for token, method, path, body in [
                    ("uncached", "GET", "/api/v1/runs", None),
                    ("cached", "GET", "/api/v1/runs", None),
                    ("cached", "POST", "/api/v1/runs", {"dag": DAG}),
                    ("cached", "GET", f"/api/v1/runs/{uuid.uuid4()}", None),
                    ("cached", "POST", f"/api/v1/runs/{uuid.uuid4()}/cancel", None),
                    ("cached", "PUT", "/api/v1/dags/edges", DAG),
                    ("cached", "GET", "/api/v1/dags", None),
                ]:
                    r = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
                    seen.append((f"{method} {path}", r.status_code, r.headers.get("retry-after")))
                seen.append(("GET /readyz", (await http.get("/readyz")).status_code, "-"))
        finally:
            await queue.close()
            await store.close()
        return seen

    seen = asyncio.run(main())
    assert all(code == 503 and retry for _, code, retry in seen), seen


def test_a_token_over_its_rate_limit_gets_429_with_retry_after(stack):
    from flowforge.api.app import create_app
    from flowforge.api.context import ApiContext

    async def readiness() -> dict[str, str]:
        return {}

    ctx = ApiContext(stack.stack.catalog, stack.stack.submitter, readiness, pools=stack.stack.pool_directory,
                     rate_per_s=2, rate_burst=3)
    token = stack.call(stack.stack.catalog.create_token("default", "rate"))
    other = stack.call(stack.stack.catalog.create_token("default", "rate-2"))
    app = create_app(ctx)

    async def main() -> tuple[list[int], str | None, int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            codes, retry = [], None
            for _ in range(5):
                r = await http.get("/api/v1/dags", headers={"Authorization": f"Bearer {token}"})
                codes.append(r.status_code)
                if r.status_code == 429:
                    retry = r.headers.get("retry-after")
                    assert r.headers["content-type"].startswith("application/problem+json")
            fresh = (await http.get("/api/v1/dags", headers={"Authorization": f"Bearer {other}"})).status_code
            await asyncio.sleep(0.6)  # the bucket refills at 2/s
            later = (await http.get("/api/v1/dags", headers={"Authorization": f"Bearer {token}"})).status_code
            return codes, retry, fresh, later

    codes, retry, fresh, later = stack.call(main())
    assert codes == [200, 200, 200, 429, 429] and retry == "1"
    assert fresh == 200 and later == 200  # the limit is per token, and it refills
