"""A DAG written with the Python SDK. `python -m examples.sdk_pipeline` prints its JSON spec."""

from __future__ import annotations

from flowforge import sdk


@sdk.task
def extract(n: int) -> list[int]:
    return list(range(n))


@sdk.task(retries=2)
def transform(values: list[int]) -> list[int]:
    return [v * 10 for v in values]


@sdk.task
def load(values: list[int], target: str) -> str:
    print(f"loading {len(values)} rows into {target}")
    return f"{len(values)} rows into {target}"


def build() -> sdk.DAG:
    with sdk.DAG("sdk-pipeline", params={"n": 20, "target": "analytics.numbers"}) as dag:
        raw = extract(dag.param("n"))
        shaped = transform(raw.output)
        load(shaped.output, dag.param("target"))
    return dag


if __name__ == "__main__":
    print(build().to_json(indent=2))
