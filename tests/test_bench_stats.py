import pytest

from bench.stats import chain_metrics, hops_ms, percentile


def test_percentile_linear_interpolation():
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    # rank = 3 * 0.95 = 2.85 -> 3 + 0.85 * (4 - 3)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_hops_ms():
    assert hops_ms([]) == []
    assert hops_ms([1.0]) == []
    assert hops_ms([1.0, 1.001, 1.004]) == pytest.approx([1.0, 3.0])


def test_chain_metrics():
    m = chain_metrics([1.0, 2.0, 3.0])
    assert m["per_hop_ms_p50"] == pytest.approx(2.0)
    assert m["per_hop_ms_p95"] == pytest.approx(2.9)


def test_metric_directions():
    from bench.run import lower_is_better

    assert lower_is_better("per_hop_ms_p50") and lower_is_better("seconds_p50")
    assert lower_is_better("b_slowdown") and lower_is_better("b_slowdown_fifo") and lower_is_better("claim_rtts")
    assert not lower_is_better("tasks_per_s") and not lower_is_better("postgres_lines_per_s")
