"""Task functions the end-to-end tests run on real agents."""

from __future__ import annotations

import asyncio
import os
import time

from flowforge import sdk


def noop() -> None:
    return None


def const(value):
    return value


def add(a: int, b: int) -> int:
    return a + b


def double(x: int) -> int:
    return 2 * x


def total(values: list[int]) -> int:
    return sum(values)


def numbers(n: int) -> list[int]:
    return list(range(n))


def flaky(succeed_on: int = 3) -> dict:
    """Fails until attempt `succeed_on`, then returns the attempt number and when it ran."""
    ctx = sdk.context()
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def boom() -> None:
    raise ValueError("boom: this task always fails")


def spin(seconds: float) -> str:
    """Busy Python loop: stops when interrupted (timeout or cancel)."""
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.01)
    return "finished"


async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def chatty(lines: int) -> int:
    for i in range(lines):
        print(f"line {i}")
    return lines


def not_json():
    return {1, 2, 3}


def huge(n: int) -> str:
    return "x" * n


def slow_once(marker: str, seconds: float) -> str:
    """Sleeps on the first delivery (so its agent can be killed mid-task), fast afterwards."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(seconds)
    return "done"


def crash_agent() -> None:
    """Kills the agent process running it, every time: a poison task."""
    os._exit(17)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def not_a_number() -> float:
    return float("nan")


def nul_output() -> str:
    return "before\x00after"


def nul_print() -> str:
    print("a\x00b")
    return "printed"


def flood(lines: int, width: int) -> int:
    for _ in range(lines):
        print("y" * width)
    return lines


def fails_until_exists(path: str) -> str:
    """Fails while `path` does not exist: fixed from outside, then retried."""
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist yet")
    return "ok"


def hog(megabytes: int) -> int:
    """Hold `megabytes` of memory at once (to meet a memory limit)."""
    block = bytearray(megabytes << 20)
    return len(block)


def where() -> dict:
    """Which process ran this attempt: a warm agent or a fresh one."""
    import os

    return {"pid": os.getpid(), "ppid": os.getppid()}


def counted(ledger: str, seconds: float) -> float:
    """Record this execution (run, task, attempt) in `ledger`, one line per execution, then nap."""
    ctx = sdk.context()
    with open(ledger, "a") as f:
        f.write(f"{ctx.run_id} {ctx.task} {ctx.attempt}\n")
    time.sleep(seconds)
    return seconds


def leak(token: str) -> dict:
    """A careless task: prints its secret argument, returns it, then fails quoting it."""
    print(f"calling the API with {token}")
    return {"echo": token, "length": len(token)}


def leak_and_fail(token: str) -> None:
    print(f"using {token}")
    raise RuntimeError(f"the service refused {token}")


def chatty(n: int, every: int = 500, pause: float = 0.02) -> int:
    """Prints `n` numbered lines, pausing now and then so a follower sees them arrive live."""
    for i in range(n):
        print(f"line {i}")
        if every and i % every == every - 1:
            time.sleep(pause)
    return n


def logs_a_little() -> None:
    import logging

    print("to stdout")
    logging.getLogger("tests.tasks").info("an info record")
    logging.getLogger("tests.tasks").warning("a warning record")
    import sys

    print("to stderr", file=sys.stderr)
