"""The Pod-side runtime: the entry point of a heavy attempt that runs a Python `fn`.

`python -m agents.podrun` reads the attempt from FLOWFORGE_ATTEMPT (base64 msgpack, written by
the launcher), imports the function (only from the modules the task's pool allows), runs it,
and prints the result as its last stdout line (`pods.RESULT_MARK` + JSON). The launcher reads
that line and reports the result through the same event path as a light task. Exit codes:
0 success, 1 the function raised, 2 refused (not allowed, unreadable, result not JSON),
137 out of memory.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

import msgpack

from agents import loading, pods
from flowforge import sdk

ATTEMPT_ENV = "FLOWFORGE_ATTEMPT"


def encode(attempt: dict[str, Any]) -> str:
    return base64.b64encode(msgpack.packb(attempt, use_bin_type=True)).decode()


def _report(**result: Any) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout.write("\n" + pods.RESULT_MARK + json.dumps(result, allow_nan=False) + "\n")
    sys.stdout.flush()


def main() -> int:
    try:
        attempt = msgpack.unpackb(base64.b64decode(os.environ[ATTEMPT_ENV]), raw=False)
        fn, is_async = loading.Loader(attempt["pool"], attempt.get("allowed") or ()).load(attempt["fn"])
    except loading.Rejected as exc:
        _report(ok=False, reason="rejected", error=str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a refusal, reported as such
        _report(ok=False, reason="rejected", error=f"unreadable attempt: {exc!r}")
        return 2
    sdk._set_context(sdk.TaskContext(
        run_id=attempt["run"], task=attempt["task"], attempt=attempt["attempt"], tenant=attempt.get("tenant") or "",
        map_index=attempt.get("map_index"), cancelled=threading.Event(),
    ))
    args = attempt.get("args") or []
    began = time.time()
    try:
        call = (lambda: fn(**args)) if isinstance(args, dict) else (lambda: fn(*args))
        output = asyncio.run(call()) if is_async else call()
    except MemoryError:
        _report(ok=False, reason="oom_killed", error="out of memory (MemoryError)", started_at=began)
        return 137
    except BaseException:  # noqa: BLE001 - the attempt's failure, with its traceback
        _report(ok=False, reason="error", error=traceback.format_exc()[-16_384:], started_at=began)
        return 1
    try:
        _report(ok=True, output=output, started_at=began)
    except (TypeError, ValueError) as exc:
        _report(ok=False, reason="rejected",
                error=f"result of type {type(output).__name__} is not JSON-serialisable ({exc})")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
