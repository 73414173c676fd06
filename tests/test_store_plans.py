"""The coordinator's write finds each row by primary key, however many rows a table holds."""

from __future__ import annotations

import json
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st


def test_the_hot_update_joins_by_index_not_by_scanning_tasks(stack):
    from flowforge.backends.postgres.store import _TASK_COLS, _TASK_SET

    store = stack.stack.store
    rows = json.dumps([{"run_id": str(uuid.uuid4()), "key": "t", "before_status": "pending", "before_attempt": 0,
                        "status": "queued", "attempt": 1, "retry_base": 0, "infra_failures": 0}])
    query = (f"EXPLAIN UPDATE tasks AS t SET {_TASK_SET} FROM jsonb_to_recordset(%s::jsonb) AS u({_TASK_COLS}) "
             "WHERE t.run_id = u.run_id AND t.key = u.key AND t.status = u.before_status "
             "AND t.attempt = u.before_attempt")

    async def plan() -> str:
        conn = await store._hot_connection()
        await conn.execute("SET enable_seqscan = on")  # the planner may still choose a scan...
        found = await (await conn.execute(query, (rows,))).fetchall()
        return "\n".join(r[0] for r in found)

    text = stack.call(plan())
    assert "Index Scan using tasks_pkey" in text and "Seq Scan on tasks" not in text, text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=6), max_size=5))
def test_write_rows_encode_as_the_json_module_would(rows):
    """The write's fast encoder (orjson) and its fallback (json, for integers past 64 bits)
    give Postgres the same document json would: dict keys as text, floats exact."""
    from flowforge.backends.postgres.store import _dumps

    assert json.loads(_dumps(rows)) == json.loads(json.dumps(rows, default=str))
