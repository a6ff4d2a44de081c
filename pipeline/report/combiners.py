"""Mergeable Beam CombineFns for the stats report: fixed-bin histograms with quantiles, k smallest, value counts."""

import bisect
import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

# The quantiles every Hist reports, as percent.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass(frozen=True)
class HistSpec:
    """Fixed bin edges for one metric: chosen per metric, never from the data, so two datasets' histograms line up."""

    edges: tuple[float, ...]
    log: bool = False

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"edges must be at least two and increasing, got {self.edges}")

    @property
    def bins(self) -> int:
        return len(self.edges) - 1


def linear_edges(start: float, stop: float, bins: int) -> tuple[float, ...]:
    """`bins` equal bins from start to stop; rounded so that edges print as written (0.3, not 0.30000000000000004)."""
    step = (stop - start) / bins
    return tuple(round(start + i * step, 10) for i in range(bins + 1))


def log_edges(start: float, stop: float, bins: int) -> tuple[float, ...]:
    """`bins` log-spaced bins from start to stop, to 6 significant digits."""
    ratio = (stop / start) ** (1 / bins)
    return tuple(float(f"{start * ratio**i:.6g}") for i in range(bins + 1))


def bin_index(spec: HistSpec, value: float) -> int:
    """The bin of `value`: values below the first edge go in the first bin, those at or above the last in the last."""
    return min(max(bisect.bisect_right(spec.edges, value) - 1, 0), spec.bins - 1)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class HistogramsFn(beam.CombineFn):
    """{metric: value} dicts -> {metric: Hist}: per metric, fixed-bin counts, count/min/max/sum/mean and approximate
    quantiles (Beam's ApproximateQuantiles sketch), in memory independent of the number of inputs.

    A metric missing from an input, None or not finite is not counted for that input.
    """

    def __init__(self, specs: Mapping[str, HistSpec]):
        self.specs = dict(specs)
        self._quantiles = ApproximateQuantilesCombineFn.create(num_quantiles=101)

    def create_accumulator(self) -> dict[str, list]:
        return {name: self._empty(spec) for name, spec in self.specs.items()}

    def _empty(self, spec: HistSpec) -> list:
        return [[0] * spec.bins, 0, None, None, 0, self._quantiles.create_accumulator()]

    def add_input(self, acc: dict[str, list], values: Mapping[str, Any]) -> dict[str, list]:
        for name, value in values.items():
            if name not in self.specs or not _finite(value):
                continue
            a = acc[name]
            a[0][bin_index(self.specs[name], value)] += 1
            a[1] += 1
            a[2] = value if a[2] is None else min(a[2], value)
            a[3] = value if a[3] is None else max(a[3], value)
            a[4] += value
            a[5] = self._quantiles.add_input(a[5], value)
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, list]]) -> dict[str, list]:
        accs = list(accs)
        out = self.create_accumulator()
        for name in self.specs:
            parts = [a[name] for a in accs]
            o = out[name]
            o[0] = [sum(c) for c in zip(*(p[0] for p in parts), strict=True)]
            o[1] = sum(p[1] for p in parts)
            mins = [p[2] for p in parts if p[2] is not None]
            maxs = [p[3] for p in parts if p[3] is not None]
            o[2], o[3] = (min(mins) if mins else None), (max(maxs) if maxs else None)
            o[4] = sum(p[4] for p in parts)
            o[5] = self._quantiles.merge_accumulators([p[5] for p in parts])
        return out

    def compact(self, acc: dict[str, list]) -> dict[str, list]:
        for a in acc.values():
            a[5] = self._quantiles.compact(a[5])
        return acc

    def extract_output(self, acc: dict[str, list]) -> dict[str, dict]:
        return {name: self._hist(self.specs[name], acc[name]) for name in self.specs}

    def _hist(self, spec: HistSpec, a: list) -> dict:
        counts, n, lo, hi, total, sketch = a
        q = self._quantiles.extract_output(sketch) if n else []
        return {
            "edges": list(spec.edges),
            "counts": list(counts),
            "log": spec.log,
            "count": n,
            "min": lo,
            "max": hi,
            "sum": total,
            "mean": total / n if n else None,
            "quantiles": {f"p{p}": (q[p] if q else None) for p in PERCENTILES},
        }


def most_frequent_first(pair: tuple[Any, int]) -> tuple[int, Any]:
    """Sort key of (value, count): higher count first, ties by value."""
    return -pair[1], pair[0]


class SmallestFn(beam.CombineFn):
    """The k inputs with the smallest `key(input)` (the input itself by default), sorted: top-k and seeded samples
    in memory of O(k), whatever the input size."""

    def __init__(self, k: int, key: Callable[[Any], Any] | None = None):
        if k < 0:
            raise ValueError(f"k must be at least 0, got {k}")
        self.k = k
        self.key = key

    def _trim(self, items: list) -> list:
        return heapq.nsmallest(self.k, items, key=self.key)

    def create_accumulator(self) -> list:
        return []

    def add_input(self, acc: list, item: Any) -> list:
        acc.append(item)
        # Trimming at 2k keeps adds O(1) amortised and memory at most 2k.
        return self._trim(acc) if len(acc) > 2 * self.k else acc

    def merge_accumulators(self, accs: Iterable[list]) -> list:
        return self._trim([x for a in accs for x in a])

    def extract_output(self, acc: list) -> list:
        return self._trim(acc)


class CounterFn(beam.CombineFn):
    """Inputs -> {input: times seen}, None not counted. Only for small vocabularies (languages, formats, count
    values)."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, item: Any) -> dict:
        if item is not None:
            acc[item] = acc.get(item, 0) + 1
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out: dict = {}
        for a in accs:
            for item, n in a.items():
                out[item] = out.get(item, 0) + n
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


class PerKindFn(beam.CombineFn):
    """(kind, value) inputs -> {kind: output of `fn` over that kind's values}, for a few kinds in one combine."""

    def __init__(self, fn: beam.CombineFn):
        self.fn = fn

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, item: tuple[Any, Any]) -> dict:
        kind, value = item
        acc[kind] = self.fn.add_input(acc[kind] if kind in acc else self.fn.create_accumulator(), value)
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        by_kind: dict = {}
        for a in accs:
            for kind, acc in a.items():
                by_kind.setdefault(kind, []).append(acc)
        return {kind: self.fn.merge_accumulators(parts) for kind, parts in by_kind.items()}

    def extract_output(self, acc: dict) -> dict:
        return {kind: self.fn.extract_output(a) for kind, a in acc.items()}


class TaggedFn(beam.CombineFn):
    """(tag, value) inputs -> {tag: output of fns[tag] over that tag's values}: many combines in one shuffle."""

    def __init__(self, fns: Mapping[str, beam.CombineFn]):
        self.fns = dict(fns)

    def create_accumulator(self) -> dict:
        return {tag: fn.create_accumulator() for tag, fn in self.fns.items()}

    def add_input(self, acc: dict, item: tuple[str, Any]) -> dict:
        tag, value = item
        acc[tag] = self.fns[tag].add_input(acc[tag], value)
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        accs = list(accs)
        return {tag: fn.merge_accumulators([a[tag] for a in accs]) for tag, fn in self.fns.items()}

    def compact(self, acc: dict) -> dict:
        return {tag: fn.compact(acc[tag]) for tag, fn in self.fns.items()}

    def extract_output(self, acc: dict) -> dict:
        return {tag: fn.extract_output(acc[tag]) for tag, fn in self.fns.items()}


class CountsFn(beam.CombineFn):
    """Per key: (kept, rejected, {fetch-outcome reason: n}) from (kept, rejected, reason or None) inputs; plain counts
    use (1, 0, None) and read the first number."""

    def create_accumulator(self) -> tuple[int, int, dict]:
        return 0, 0, {}

    def add_input(self, acc: tuple[int, int, dict], item: tuple[int, int, str | None]) -> tuple[int, int, dict]:
        kept, rejected, outcomes = acc
        if item[2] is not None:
            outcomes[item[2]] = outcomes.get(item[2], 0) + 1
        return kept + item[0], rejected + item[1], outcomes

    def merge_accumulators(self, accs: Iterable[tuple[int, int, dict]]) -> tuple[int, int, dict]:
        accs = list(accs)
        return (
            sum(a[0] for a in accs),
            sum(a[1] for a in accs),
            CounterFn().merge_accumulators(a[2] for a in accs),
        )

    def extract_output(self, acc: tuple[int, int, dict]) -> tuple[int, int, dict]:
        return acc
