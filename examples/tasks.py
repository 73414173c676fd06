"""Task functions used by the example DAGs: plain Python, nothing FlowForge-specific except
where a task wants to know its attempt (`sdk.context()`)."""

from __future__ import annotations

import random
import time

from flowforge import sdk


def fetch(source: str) -> dict:
    """Pretend to download a dataset."""
    time.sleep(0.05)
    return {"source": source, "rows": 1200}


def clean(data: dict) -> dict:
    return {"rows": data["rows"] - 34, "dropped": 34}


def enrich(data: dict, factor: float) -> dict:
    return {"rows": data["rows"], "score": round(data["rows"] * factor, 2)}


def report(cleaned: dict, enriched: dict) -> str:
    line = f"{cleaned['rows']} clean rows, {cleaned['dropped']} dropped, score {enriched['score']}"
    print(line)
    return line


def check_quality(threshold: float) -> dict:
    score = 0.93
    return {"score": score, "ok": score >= threshold}


def publish(target: str) -> str:
    print(f"publishing to {target}")
    return f"published to {target}"


def quarantine(reason: str) -> str:
    return f"quarantined: {reason}"


def call_flaky_api(fail_times: int = 2) -> dict:
    """Fails on its first `fail_times` attempts (a flaky upstream), then succeeds."""
    attempt = sdk.context().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"upstream API unavailable (attempt {attempt})")
    return {"attempt": attempt, "status": "ok"}


def list_items(n: int) -> list[int]:
    return list(range(n))


def square(x: int) -> int:
    time.sleep(random.uniform(0.0, 0.01))
    return x * x


def summarize(values: list[int]) -> dict:
    return {"count": len(values), "sum": sum(values)}


def train(rows: int, epochs: int = 3) -> dict:
    """A CPU-hungry step: in production it gets its own Pod with the CPU and memory it asks for."""
    loss = 1.0
    for epoch in range(epochs):
        loss = round(loss * 0.5 + sum(i * i for i in range(20_000)) % 7 / 1000, 4)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss}")
    return {"rows": rows, "epochs": epochs, "loss": loss}
