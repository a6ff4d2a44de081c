"""The report's CombineFns, driven by hand (add, merge, extract) as a runner would, split across accumulators."""

import numpy as np
import pytest

from pipeline.report.combiners import (
    CounterFn,
    CountsFn,
    HistogramsFn,
    HistSpec,
    PerKindFn,
    SmallestFn,
    TaggedFn,
    bin_index,
    linear_edges,
    log_edges,
    most_frequent_first,
)


def _combine(fn, inputs, parts: int = 3):
    """Add inputs round-robin to `parts` accumulators, merge them, extract: what a distributed runner does."""
    accs = [fn.create_accumulator() for _ in range(parts)]
    for i, x in enumerate(inputs):
        accs[i % parts] = fn.add_input(accs[i % parts], x)
    return fn.extract_output(fn.merge_accumulators(accs))


def test_edges_are_fixed_and_printable() -> None:
    assert linear_edges(0, 1, 10)[3] == 0.3
    assert linear_edges(-0.2, 1.0, 60)[:3] == (-0.2, -0.18, -0.16)
    assert log_edges(1, 1000, 3) == (1.0, 10.0, 100.0, 1000.0)
    with pytest.raises(ValueError):
        HistSpec((1.0, 1.0))


def test_bin_index_clamps_to_the_end_bins() -> None:
    spec = HistSpec((0.0, 10.0, 20.0))
    assert [bin_index(spec, v) for v in (-5, 0, 9.99, 10, 20, 1e9)] == [0, 0, 0, 1, 1, 1]


def test_histograms_match_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 120, 1000).tolist()
    spec = HistSpec(linear_edges(0, 100, 20))
    fn = HistogramsFn({"v": spec, "unused": spec})
    inputs = [{"v": v} for v in values] + [{"v": None}, {"v": float("nan")}, {"other": 3}]
    out = _combine(fn, inputs)
    h = out["v"]
    clamped = np.clip(values, 0, 99.999)
    assert h["counts"] == np.histogram(clamped, bins=np.array(spec.edges))[0].tolist()
    assert (h["count"], h["min"], h["max"], h["sum"]) == (1000, min(values), max(values), sum(values))
    assert h["mean"] == pytest.approx(np.mean(values)) and h["log"] is False and h["edges"] == list(spec.edges)
    # Small inputs stay exact in the sketch: each quantile is a nearest-rank order statistic.
    ordered = sorted(values)
    for p in (1, 5, 25, 50, 75, 95, 99):
        assert h["quantiles"][f"p{p}"] in ordered[max(0, 10 * p - 11) : 10 * p + 1]
    assert out["unused"]["count"] == 0 and out["unused"]["mean"] is None and out["unused"]["quantiles"]["p50"] is None


def test_smallest_keeps_k_in_order() -> None:
    assert _combine(SmallestFn(3), [5, 1, 9, 3, 7, 2, 8]) == [1, 2, 3]
    pairs = [("b", 2), ("a", 2), ("c", 5), ("d", 1), ("e", 1)]
    assert _combine(SmallestFn(3, most_frequent_first), pairs) == [("c", 5), ("a", 2), ("b", 2)]
    assert _combine(SmallestFn(10), []) == []


def test_counter_and_domain_fns() -> None:
    assert _combine(CounterFn(), ["en", "de", "en", None]) == {"en": 2, "de": 1}
    per_kind = PerKindFn(SmallestFn(2))
    assert _combine(per_kind, [("a", 3), ("b", 1), ("a", 1), ("a", 2)]) == {"a": [1, 2], "b": [1]}
    tagged = TaggedFn({"n": CounterFn(), "top": SmallestFn(1), "none": CounterFn()})
    assert _combine(tagged, [("n", "x"), ("top", 4), ("n", "x"), ("top", 2)]) == {"n": {"x": 2}, "top": [2], "none": {}}
    outcomes = [(1, 0, None), (0, 1, "timeout"), (0, 1, None), (0, 1, "timeout"), (1, 0, None)]
    assert _combine(CountsFn(), outcomes) == (2, 3, {"timeout": 2})
