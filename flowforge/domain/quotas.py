"""Quota values as people write them and as the engine counts them: CPU as a quantity of cores
("500m", "2", 1.5) counted in millicores, memory as a quantity of bytes ("8Gi", "512Mi")
counted in bytes. Parsing raises ValueError with the fix; formatting is its inverse."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from flowforge.domain import routing

MAX_MILLICORES = 2**31 - 1  # the column is an int
MAX_BYTES = 2**63 - 1  # the column is a bigint
QUOTA_NAMES = ("max_running_tasks", "max_cpu", "max_memory", "max_gpu", "max_active_runs", "max_dag_tasks")


def millicores(value: str | int | float) -> int:
    """CPU cores ("500m", "2", 1.5) as millicores; ValueError unless a whole number of
    millicores between 1m and about 2.1 million cores."""
    cores = routing.quantity(value)  # ValueError names the accepted forms
    m = cores * 1000
    if m != m.to_integral_value():
        raise ValueError(f"{value!r} is finer than 1m (a thousandth of a core); round it, e.g. '250m'")
    if not 1 <= m <= MAX_MILLICORES:
        raise ValueError(f"{value!r} is outside 1m..{MAX_MILLICORES // 1000} cores")
    return int(m)


def byte_count(value: str | int | float) -> int:
    """Memory ("8Gi", "512Mi", 1073741824) as bytes, rounded up; ValueError unless at least
    one byte and below 8Ei."""
    size = routing.quantity(value)
    n = int(size.to_integral_value(rounding=ROUND_CEILING))
    if not 1 <= n <= MAX_BYTES:
        raise ValueError(f"{value!r} is outside 1 byte..8Ei")
    return n


def _decimal(value: float | Decimal) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def format_cpu(m: int) -> str:
    """Millicores as people write them: 2000 -> "2", 1500 -> "1500m", 250 -> "250m"; parses back."""
    return str(m // 1000) if m % 1000 == 0 else f"{m}m"


def format_cores(m: int) -> str:
    """Millicores as cores, for messages: 2000 -> "2", 1500 -> "1.5"."""
    return _decimal(Decimal(m) / 1000)


def format_memory(n: int, exact: bool = False) -> str:
    """Bytes with a binary unit: 8589934592 -> "8Gi"; `exact` keeps a value that no unit
    divides as bytes (so it parses back), else rounds to two decimals ("1.5Gi")."""
    for unit, factor in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= factor and (not exact or n % factor == 0):
            return f"{n // factor}{unit}" if n % factor == 0 else f"{n / factor:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def format_gpu(thousandths: int) -> str:
    return _decimal(Decimal(thousandths) / 1000)
