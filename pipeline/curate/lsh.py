"""Near-duplicate search on 64-bit hashes: pigeonhole banding into shuffle groups, and pairs verified by popcount.

Banding: two hashes within k bits agree exactly on at least one of k+1 disjoint bands (pigeonhole), so grouping
by (band, band value) finds every such pair and only pays for pairs sharing a band. A run of hashes sharing one
band value that is too large to compare all-pairs is split again the same way on its remaining bits, so a skewed
band costs about what a uniform one does; identical hashes are collapsed before any pair is formed.

In Beam the shuffle key is (band, bucket), a bucket holding the band values that hash to it (2**bucket_bits
buckets per band), and a batch of hashes travels as one numpy chunk per bucket it touches: a shuffle then moves
a few thousand chunks, not k+1 elements per hash. Each group sorts its hashes by band value and verifies the
pairs within equal values by popcount; a pair sharing several bands is reported only by the first of them.
The edges found here become groups in pipeline.curate.components.

A node may carry a row of int64 signals beside its hash, and a veto (a function of both sides' signals) drops pairs
the hash alone would accept; nodes are then identical only when hash and signals both are (every node of one search
carries signals of the same width).
"""

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.spill import SHUFFLE, Grouping

HASH_BITS = 64
ALL_BITS = (1 << HASH_BITS) - 1
PAIR_CAP = 1 << 20  # pairs one run may compare all-against-all before it is split on its remaining bits
_CHUNK = 1 << 22  # candidate pairs materialized at once
Pair = tuple[Any, Any]  # (key, value) as Beam wants it spelled out
# (signals of one side, signals of the other) -> True where the pair is not a match after all; one row per pair.
Veto = Callable[[np.ndarray, np.ndarray], np.ndarray]
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads band values evenly over shuffle groups


def split_bits(domain: int, parts: int) -> list[int]:
    """Masks that partition the set bits of `domain` into `parts` groups of near-equal size, high bits first."""
    bits = [b for b in range(HASH_BITS - 1, -1, -1) if domain >> b & 1]
    if not 1 <= parts <= len(bits):
        raise ValueError(f"cannot split {len(bits)} bits into {parts} bands")
    size, extra = divmod(len(bits), parts)
    masks, start = [], 0
    for p in range(parts):
        n = size + (p < extra)
        masks.append(sum(1 << b for b in bits[start : start + n]))
        start += n
    return masks


def band_masks(k: int) -> list[int]:
    """The k+1 bands of a 64-bit hash: hashes within k bits of each other agree exactly on at least one."""
    return split_bits(ALL_BITS, k + 1)


def as_hashes(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64)


def as_signals(rows: Iterable[Sequence[int]], n: int) -> np.ndarray:
    """(n, width) int64 signals of n nodes (width 0 when nodes carry none)."""
    return np.array(list(rows), dtype=np.int64).reshape(n, -1)


def distinct_nodes(hashes: np.ndarray, signals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the index of the first node of each distinct (hash, signals) row, and each node's row."""
    if signals is None or signals.shape[1] == 0 or (signals == signals[:1]).all():  # hashes alone tell nodes apart
        _, first, inv = np.unique(hashes, return_index=True, return_inverse=True)
    else:
        rows = np.column_stack([hashes.view(np.int64), signals])
        _, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    return first, inv.reshape(-1)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def first_band(x: np.ndarray, y: np.ndarray, masks: Sequence[int]) -> np.ndarray:
    """Per pair, the index of the first band on which x and y agree (len(masks) if none)."""
    diff = x ^ y
    out = np.full(len(diff), len(masks), dtype=np.int64)
    for b in range(len(masks) - 1, -1, -1):
        out[(diff & np.uint64(masks[b])) == 0] = b
    return out


def _pairs_in_ranges(x, y, y_order, xi, lo, hi, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for each i in xi and j in y_order[lo:hi] of its row, kept where hamming(x[i], y[j]) <= k."""
    counts = hi - lo
    keep = counts > 0
    xi, lo, counts = xi[keep], lo[keep], counts[keep]
    ends = np.cumsum(counts)
    out_i, out_j, start = [], [], 0
    while start < len(xi):
        budget = (ends[start] - counts[start]) + _CHUNK
        stop = max(start + 1, int(np.searchsorted(ends, budget, side="right")))
        c = counts[start:stop]
        i = np.repeat(xi[start:stop], c)
        j = y_order[np.repeat(lo[start:stop] - (np.cumsum(c) - c), c) + np.arange(c.sum())]
        ok = popcount(x[i] ^ y[j]) <= k
        out_i.append(i[ok])
        out_j.append(j[ok])
        start = stop
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _unique_pairs(parts: list[tuple[np.ndarray, np.ndarray]], ny: int) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    codes = np.unique(np.concatenate([i.astype(np.int64) * ny + j for i, j in parts]))
    return codes // max(ny, 1), codes % max(ny, 1)


def _split_run(x: np.ndarray, y: np.ndarray | None, k: int, rest: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of a run too large to compare all-against-all: banded again on the bits of `rest` that vary within the
    run (bits every member shares cannot tell members apart, and banding on them would only find the run again)."""
    both = x if y is None else np.concatenate([x, y])
    vary = int(np.bitwise_or.reduce(both ^ both[0])) & rest
    # k or fewer varying bits: every pair is within k, the output is the whole product and nothing is wasted.
    masks = split_bits(vary, k + 1) if vary.bit_count() > k else [ALL_BITS & ~vary]
    if y is None:
        return self_pairs(x, k, masks, vary, cap)
    return cross_pairs(x, y, k, masks, vary, cap)


def cross_pairs(
    x: np.ndarray, y: np.ndarray, k: int, masks: Sequence[int], domain: int = ALL_BITS, cap: int = PAIR_CAP
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j) with hamming(x[i], y[j]) <= k among the pairs that agree exactly on one of `masks`.

    With the k+1 bands of `domain` as masks that is every pair within k bits. A band value shared by more than
    `cap` pairs is searched again on the bits the band leaves (`domain` minus the band), split into k+1 bands.
    """
    parts = []
    for m in masks:
        xv, yv = x & np.uint64(m), y & np.uint64(m)
        y_order = np.argsort(yv, kind="stable")
        ys = yv[y_order]
        lo, hi = np.searchsorted(ys, xv, "left"), np.searchsorted(ys, xv, "right")
        rest = domain & ~m
        big = np.zeros(len(x), bool)
        if rest.bit_count() > k:  # with k bits or fewer left every pair of the run matches: nothing to gain
            _, inv, n_x = np.unique(xv, return_inverse=True, return_counts=True)
            big = n_x[inv] * (hi - lo) > cap
            for v in np.unique(xv[big]):
                xi = np.flatnonzero(xv == v)
                yj = y_order[lo[xi[0]] : hi[xi[0]]]
                i, j = _split_run(x[xi], y[yj], k, rest, cap)
                parts.append((xi[i], yj[j]))
        small = np.flatnonzero(~big)
        parts.append(_pairs_in_ranges(x, y, y_order, small, lo[small], hi[small], k))
    return _unique_pairs(parts, len(y))


def self_pairs(
    x: np.ndarray, k: int, masks: Sequence[int], domain: int = ALL_BITS, cap: int = PAIR_CAP
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j), i < j, with hamming(x[i], x[j]) <= k among pairs agreeing on one of `masks` (see cross_pairs).

    Compares each pair once: within a run of equal band values, each position only with those after it."""
    parts = []
    n = len(x)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    for m in masks:
        xv = x & np.uint64(m)
        order = np.argsort(xv, kind="stable")
        sv = xv[order]
        starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
        ends = np.r_[starts[1:], n].astype(np.int64)
        sizes = ends - starts
        rest = domain & ~m
        big = sizes * (sizes - 1) // 2 > cap if rest.bit_count() > k else np.zeros(len(sizes), bool)
        for s, e in zip(starts[big], ends[big], strict=True):
            idx = order[s:e]
            i, j = _split_run(x[idx], None, k, rest, cap)
            parts.append((idx[i], idx[j]))
        run_end = np.repeat(ends, sizes)
        pos = np.flatnonzero(~np.repeat(big, sizes))
        parts.append(_pairs_in_ranges(x, x, order, order[pos], pos + 1, run_end[pos], k))
    ordered = [(np.minimum(i, j), np.maximum(i, j)) for i, j in parts]
    return _unique_pairs(ordered, n)


def bucket_of(values: np.ndarray, bucket_bits: int) -> np.ndarray:
    """Shuffle group of each band value: equal values always meet, distinct ones spread evenly."""
    if bucket_bits == 0:
        return np.zeros(len(values), np.uint64)
    return (values * _MIX) >> np.uint64(HASH_BITS - bucket_bits)


def band_buckets(hashes: np.ndarray, k: int, bucket_bits: int) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((band, bucket), indices) for every band and every bucket the hashes' band values fall in."""
    for b, m in enumerate(band_masks(k)):
        part = bucket_of(hashes & np.uint64(m), bucket_bits)
        order = np.argsort(part, kind="stable")
        for idx in np.split(order, np.flatnonzero(np.diff(part[order])) + 1):
            if len(idx):
                yield (b, int(part[idx[0]])), idx


def bucket_edges(
    band: int, hashes: np.ndarray, ids: Sequence, k: int, signals: np.ndarray | None = None, veto: Veto | None = None
) -> list[Pair]:
    """Edges found in one (band, bucket) group: stars joining the ids of identical nodes (in band 0 only, since
    identical hashes meet in every band), and (id, id) for distinct nodes within k bits, not vetoed, whose first
    shared band is `band`, so each pair is reported by exactly one group."""
    masks = band_masks(k)
    first, inv = distinct_nodes(hashes, signals)
    uniq = hashes[first]
    edges = []
    if band == 0 and len(uniq) < len(hashes):
        same = defaultdict(list)
        for pos in np.flatnonzero(np.bincount(inv)[inv] > 1).tolist():
            same[inv[pos]].append(ids[pos])
        for members in same.values():
            m = min(members)
            edges += [(m, v) for v in members if v != m]
    i, j = self_pairs(uniq, k, [masks[band]])
    keep = first_band(uniq[i], uniq[j], masks) == band
    if veto is not None:
        keep &= ~veto(signals[first[i]], signals[first[j]])
    edges += [(ids[a], ids[b]) for a, b in zip(first[i[keep]].tolist(), first[j[keep]].tolist(), strict=True)]
    return edges


def bucket_matches(
    band: int,
    hashes: np.ndarray,
    ids: Sequence,
    ref_hashes: np.ndarray,
    payloads: Sequence,
    k: int,
    signals: tuple[np.ndarray, np.ndarray] | None = None,
    veto: Veto | None = None,
) -> list[Pair]:
    """(id, payload) for each id whose hash is within k bits of a reference hash first met in `band` (and not vetoed
    on `signals`: the queries', the references'); the smallest payload when several references match."""
    masks = band_masks(k)
    first, inv = distinct_nodes(hashes, None if signals is None else signals[0])
    uniq = hashes[first]
    i, j = cross_pairs(uniq, ref_hashes, k, [masks[band]])
    keep = first_band(uniq[i], ref_hashes[j], masks) == band
    if veto is not None:
        keep &= ~veto(signals[0][first[i]], signals[1][j])
    best: dict[int, Any] = {}
    for a, b in zip(i[keep].tolist(), j[keep].tolist(), strict=True):
        if a not in best or payloads[b] < best[a]:
            best[a] = payloads[b]
    if not best:
        return []
    hit = np.flatnonzero(np.isin(inv, list(best))).tolist()
    return [(ids[pos], best[int(inv[pos])]) for pos in hit]


class _ToBuckets(beam.DoFn):
    """A batch of (label, hash[, signals]) -> ((band, bucket), (hashes, signals, labels)) chunks: one shuffled
    element per bucket the batch touches rather than k+1 per hash."""

    def __init__(self, k: int, bucket_bits: int):
        self.k, self.bucket_bits = k, bucket_bits

    def process(self, batch: list[tuple]) -> Iterator[Pair]:
        labels = [e[0] for e in batch]
        hashes = as_hashes(e[1] for e in batch)
        signals = as_signals((e[2] if len(e) > 2 else () for e in batch), len(batch))
        for key, idx in band_buckets(hashes, self.k, self.bucket_bits):
            yield key, (hashes[idx], signals[idx], [labels[i] for i in idx.tolist()])


def _concat(chunks: list[tuple]) -> tuple[np.ndarray, np.ndarray, list]:
    return (
        np.concatenate([c[0] for c in chunks]),
        np.concatenate([c[1] for c in chunks]),
        [label for c in chunks for label in c[2]],
    )


def _group_edges(element: tuple, k: int, veto: Veto | None) -> list[Pair]:
    (band, _), chunks = element
    hashes, signals, ids = _concat(list(chunks))
    edges = bucket_edges(band, hashes, ids, k, signals, veto)
    Metrics.counter("lsh", "edges").inc(len(edges))
    return edges


def _group_matches(element: tuple, k: int, veto: Veto | None) -> list[Pair]:
    (band, _), groups = element
    if not groups["queries"] or not groups["refs"]:
        return []
    hashes, signals, ids = _concat(list(groups["queries"]))
    ref_hashes, ref_signals, payloads = _concat(list(groups["refs"]))
    return bucket_matches(band, hashes, ids, ref_hashes, payloads, k, (signals, ref_signals), veto)


def _bucketed(pcoll: beam.PCollection, k: int, bucket_bits: int, label: str) -> beam.PCollection:
    return (
        pcoll
        | f"Batch{label}" >> beam.BatchElements(min_batch_size=1000, max_batch_size=100_000)
        | f"Bucket{label}" >> beam.ParDo(_ToBuckets(k, bucket_bits))
    )


class NearPairs(beam.PTransform):
    """(id, 64-bit hash[, signals]) -> edges (id, id) joining ids whose hashes are within k bits (identical ones
    included) unless `veto` rejects their signals.

    2**bucket_bits shuffle groups per band: raise it with the corpus so that one group fits a worker."""

    def __init__(self, k: int, bucket_bits: int, veto: Veto | None = None, grouping: Grouping = SHUFFLE):
        super().__init__()
        self.k, self.bucket_bits, self.veto, self.grouping = k, bucket_bits, veto, grouping

    def expand(self, nodes: beam.PCollection) -> beam.PCollection:
        return (
            _bucketed(nodes, self.k, self.bucket_bits, "")
            | "GroupBands" >> self.grouping.group("GroupBands", self.k + 1)
            | "Verify" >> beam.FlatMap(_group_edges, self.k, self.veto)
        )


class NearMatches(beam.PTransform):
    """(queries: (id, hash[, signals]), refs: (payload, hash[, signals])) -> (id, payload) for every reference within
    k bits of the id's hash and not vetoed (an id may be reported once per matching band group; combine per id
    downstream)."""

    def __init__(self, k: int, bucket_bits: int, veto: Veto | None = None, grouping: Grouping = SHUFFLE):
        super().__init__()
        self.k, self.bucket_bits, self.veto, self.grouping = k, bucket_bits, veto, grouping

    def expand(self, pcolls: Any) -> beam.PCollection:
        queries, refs = pcolls
        return (
            {
                "queries": _bucketed(queries, self.k, self.bucket_bits, "Queries"),
                "refs": _bucketed(refs, self.k, self.bucket_bits, "Refs"),
            }
            | "JoinBands" >> self.grouping.cogroup("JoinBands", self.k + 1)
            | "Verify" >> beam.FlatMap(_group_matches, self.k, self.veto)
        )
