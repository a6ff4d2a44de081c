"""Banding and pair search on 64-bit hashes: the pigeonhole property, exactness against brute force, skew, vetoes."""

import random

import numpy as np
import pytest

from pipeline.curate.components import components_pure
from pipeline.curate.lsh import (
    ALL_BITS,
    as_signals,
    band_buckets,
    band_masks,
    bucket_edges,
    bucket_matches,
    cross_pairs,
    distinct_nodes,
    first_band,
    self_pairs,
    split_bits,
)


def _flip(h: int, n: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), n):
        h ^= 1 << b
    return h


def _brute_self(x: np.ndarray, k: int) -> set[tuple[int, int]]:
    d = np.bitwise_count(x[:, None] ^ x[None, :])
    i, j = np.nonzero(np.triu(d <= k, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _brute_cross(x: np.ndarray, y: np.ndarray, k: int) -> set[tuple[int, int]]:
    i, j = np.nonzero(np.bitwise_count(x[:, None] ^ y[None, :]) <= k)
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _as_set(pairs: tuple[np.ndarray, np.ndarray]) -> set[tuple[int, int]]:
    return set(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))


def _planted(n: int, k: int, seed: int) -> np.ndarray:
    """n random hashes, a third of them copies of others with 0..k+2 bits flipped: pairs on both sides of k."""
    rng = random.Random(seed)
    hashes = [rng.getrandbits(64) for _ in range(n)]
    for i in range(0, n, 3):
        hashes[i] = _flip(hashes[rng.randrange(n)], rng.randint(0, k + 2), rng)
    return np.unique(np.array(hashes, dtype=np.uint64))


def test_bands_partition_the_64_bits():
    for k in range(16):
        masks = band_masks(k)
        assert len(masks) == k + 1
        assert sum(masks) == ALL_BITS and all(a & b == 0 for a in masks for b in masks if a is not b)
        sizes = [m.bit_count() for m in masks]
        assert max(sizes) - min(sizes) <= 1
    assert split_bits(0b1011_0000, 2) == [0b1010_0000, 0b0001_0000]
    with pytest.raises(ValueError):
        split_bits(0b11, 3)


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_pigeonhole_hashes_k_bits_apart_always_share_a_band(k):
    rng = random.Random(k)
    masks = band_masks(k)
    x = np.array([rng.getrandbits(64) for _ in range(2000)], dtype=np.uint64)
    y = np.array([_flip(int(h), k, rng) for h in x], dtype=np.uint64)
    assert (np.bitwise_count(x ^ y) == k).all()
    assert (first_band(x, y, masks) < len(masks)).all()


@pytest.mark.parametrize("k", [0, 2, 4, 6])
def test_self_and_cross_pairs_equal_brute_force(k):
    x = _planted(1500, k, seed=k)
    y = np.unique(np.r_[_planted(800, k, seed=k + 100), x[:200] ^ np.uint64(0b101)])
    masks = band_masks(k)
    assert _as_set(self_pairs(x, k, masks)) == _brute_self(x, k)
    assert _as_set(cross_pairs(x, y, k, masks)) == _brute_cross(x, y, k)
    # A tiny cap splits every run on its remaining bits: the answer must not change.
    assert _as_set(self_pairs(x, k, masks, cap=100)) == _brute_self(x, k)
    assert _as_set(cross_pairs(x, y, k, masks, cap=100)) == _brute_cross(x, y, k)


def test_skewed_hashes_sharing_most_bits_are_split_not_compared_all_pairs():
    # 1500 distinct hashes that agree on their top 48 bits: one run in three of the five bands.
    rng = np.random.default_rng(0)
    x = np.unique((np.uint64(0xABCD_EF12_3456) << np.uint64(16)) | rng.integers(0, 1 << 16, 1500, dtype=np.uint64))
    pairs = self_pairs(x, 4, band_masks(4), cap=10_000)
    assert _as_set(pairs) == _brute_self(x, 4)


def test_band_buckets_send_equal_band_values_to_one_bucket():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    x[:50] = x[0] ^ np.uint64(1)  # equal in every band but the last
    seen = {}
    for (band, bucket), idx in band_buckets(x, 4, bucket_bits=6):
        assert 0 <= bucket < 64
        for v in (x[idx] & np.uint64(band_masks(4)[band])).tolist():
            assert seen.setdefault((band, v), bucket) == bucket
    assert len({b for (b, _) in seen}) == 5


def test_bucket_edges_report_each_pair_once_and_join_identical_hashes():
    k, masks = 4, band_masks(4)
    a = 0x0123_4567_89AB_CDEF
    b = a ^ 0b1001  # 2 bits apart: agree on every band but the last, so band 0 reports them
    hashes = np.array([a, b, a, a], dtype=np.uint64)
    ids = ["k3", "k1", "k2", "k0"]
    edges = [e for band in range(k + 1) for e in bucket_edges(band, hashes, ids, k)]
    # A star over the identical hashes, and one edge from one of them to b: three edges, nothing reported twice.
    assert len(edges) == 3 and {("k0", "k2"), ("k0", "k3")} <= set(edges)
    assert components_pure(edges) == dict.fromkeys(["k0", "k1", "k2", "k3"], "k0")
    assert first_band(np.array([a], np.uint64), np.array([b], np.uint64), masks).tolist() == [0]


def test_bucket_matches_give_each_query_the_smallest_payload():
    a, far = 0xFFFF_0000_FFFF_0000, 0x0F0F_0F0F_0F0F_0F0F
    refs = np.array([a ^ 1, a ^ 0b11], dtype=np.uint64)
    hashes = np.array([a, far, a], dtype=np.uint64)
    found = [
        m for band in range(5) for m in bucket_matches(band, hashes, ["q0", "q1", "q2"], refs, [(2, "x"), (1, "y")], 4)
    ]
    assert sorted(found) == [("q0", (1, "y")), ("q2", (1, "y"))]


def _differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A veto on one signal column: nodes whose signal differs are not a match."""
    return a[:, 0] != b[:, 0]


def test_nodes_are_identical_only_when_hash_and_signals_are():
    hashes = np.array([5, 5, 5, 7], dtype=np.uint64)
    first, inv = distinct_nodes(hashes, as_signals([(1,), (2,), (1,), (1,)], 4))
    assert sorted(first.tolist()) == [0, 1, 3] and inv[0] == inv[2] and len(set(inv.tolist())) == 3
    first, inv = distinct_nodes(hashes, as_signals([(), (), (), ()], 4))  # no signals: by hash alone
    assert sorted(first.tolist()) == [0, 3]


def test_bucket_edges_drop_vetoed_pairs_and_join_only_identical_nodes():
    k = 4
    a = 0x0123_4567_89AB_CDEF
    hashes = np.array([a, a, a, a ^ 0b1001, a ^ 0b11], dtype=np.uint64)
    ids = ["k0", "k1", "k2", "k3", "k4"]
    signals = as_signals([(1,), (1,), (2,), (1,), (2,)], 5)  # k2 and k4 are another picture with the same hash
    edges = [e for band in range(k + 1) for e in bucket_edges(band, hashes, ids, k, signals, _differ)]
    assert components_pure(edges) == {"k0": "k0", "k1": "k0", "k3": "k0", "k2": "k2", "k4": "k2"}
    assert len(edges) == len(set(edges)) == 3  # k0-k1 (identical), k0-k3, k2-k4: each once


def test_bucket_matches_skip_vetoed_references():
    a = 0xFFFF_0000_FFFF_0000
    refs = np.array([a ^ 1, a ^ 0b11], dtype=np.uint64)
    signals = (as_signals([(1,), (2,)], 2), as_signals([(2,), (1,)], 2))  # queries', references'
    found = [
        m
        for band in range(5)
        for m in bucket_matches(band, np.array([a, a], np.uint64), ["q0", "q1"], refs, ["x", "y"], 4, signals, _differ)
    ]
    assert sorted(found) == [("q0", "y"), ("q1", "x")]
