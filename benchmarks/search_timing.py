"""Latency, throughput and recall of the flat and IVF-PQ search indexes on the same vectors, for benchmarks.

    x = clustered_vectors(1_001_000, 512)          # queries drawn with the data, from the same clusters
    for t in time_search(x[:1_000_000], x[1_000_000:]):
        print(t.kind, t.queries_per_s, t.p50_ms, t.recall_at_k)

Each kind is timed batched (throughput) and one query a call (interactive latency) on the same data and queries.
"""

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from clipmodel.embed.config import IndexConfig
from clipmodel.embed.search import ArrayVectors, SearchIndex, build_index, plan_index


def clustered_vectors(n: int, dim: int, clusters: int = 256, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 L2-normalised vectors around `clusters` random centres, noise of norm about `spread`.

    Embeddings of real data cluster; uniform random vectors would make every index look bad (no structure) and
    flat search's cost the same, so benchmarks and recall tests use these. The same seed gives the same centres.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (C, dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))  # (n, dim)
    x = centres[rng.integers(clusters, size=n)] + noise  # (n, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k ids (q, k) that `found` (q, k) also holds."""
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


@dataclass(frozen=True)
class SearchTiming:
    kind: str
    rows: int
    dim: int
    plan: dict[str, Any]
    build_s: float  # training and adding every row
    queries_per_s: float  # every query in one batched call
    p50_ms: float  # median of one-query calls (interactive use)
    recall_at_k: float  # against the flat index's exact top-k


def time_search(
    matrix: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    cfg: IndexConfig | None = None,
    kinds: tuple[str, ...] = ("flat", "ivfpq"),
    single: int = 200,
) -> list[SearchTiming]:
    """Build each kind of index over `matrix` (N, E) and time `queries` (q, E) against it; flat always runs first,
    since its answers are the truth recall is measured against."""
    cfg = cfg or IndexConfig()
    vectors = ArrayVectors(matrix)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth, out = None, []
    for kind in ("flat", *(kd for kd in kinds if kd != "flat")):
        plan = plan_index(vectors.rows, vectors.dim, replace(cfg, kind=kind))
        start = time.perf_counter()
        index = SearchIndex(build_index(vectors, plan, cfg.seed), vectors, plan, cfg.nprobe, cfg.refine)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        batched_s = time.perf_counter() - start
        latencies = []
        for q in queries[:single]:
            start = time.perf_counter()
            index.search(q[None], k)
            latencies.append(time.perf_counter() - start)
        truth = ids if truth is None else truth
        if kind in kinds:
            out.append(SearchTiming(kind, vectors.rows, vectors.dim, plan, build_s, len(queries) / batched_s,
                                    1000 * float(np.median(latencies)), recall_at_k(ids, truth)))  # fmt: skip
    return out
