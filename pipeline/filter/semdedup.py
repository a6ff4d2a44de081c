"""Semantic deduplication (SemDeDup, Abbas et al. 2023): k-means on image embeddings, then within each cluster every
pair closer than cosine 1 - eps collapses onto one survivor.

Clustering is what makes it scale: a near-duplicate pair almost always falls in one cluster, so only pairs within a
cluster are compared, a cluster at a time (in Beam, one cluster per GroupByKey group). The k-means is spherical
(faiss, fixed seed) and trained on a fixed random sample of rows, so the same embeddings give the same centroids.

Survivors (a greedy pass, deterministic): a cluster's rows are ranked by CLIP score, best first, then by key (by key
alone when there are no scores); walking that ranking, a row is a duplicate when its cosine with a row already kept
exceeds 1 - eps, and is then named after the most similar such row; otherwise it is kept. So every duplicate names a
kept sample within eps of it, no two kept samples are within eps, and of a group of copies the one whose caption
matches its image best survives. (SemDeDup's paper instead drops a row close to any earlier row, even a dropped one,
which can remove a sample no survivor is close to; its survivor is the copy least similar to the centroid.)

The pass is blocked: rows are compared `block` at a time with the rows kept so far, `chunk` kept rows per matrix
product, so a 50,000-row cluster never needs a 50,000 x 50,000 matrix.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# faiss warns below 39 training points per centroid; fewer make the centroids noisy, never wrong (clusters only
# decide which pairs are compared), so the automatic count stays above this.
MIN_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class SemDedupConfig:
    eps: float = 0.05  # rows with cosine > 1 - eps are duplicates (SemDeDup's eps)
    clusters: int | None = None  # None: about sqrt(rows), at most max_train_rows / MIN_POINTS_PER_CENTROID
    seed: int = 0  # of the training sample and the k-means initialisation
    niter: int = 20  # k-means iterations
    max_train_rows: int = 100_000  # rows k-means trains on, a fixed random sample of the dataset
    block: int = 1024  # rows compared at once within a cluster
    chunk: int = 8192  # kept rows per matrix product

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 2.0:
            raise ValueError(f"eps must be in [0, 2), got {self.eps}")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"clusters must be at least 1, got {self.clusters}")
        if self.niter < 1 or self.max_train_rows < 1 or self.block < 1 or self.chunk < 1:
            raise ValueError("niter, max_train_rows, block and chunk must be at least 1")

    @property
    def threshold(self) -> float:
        return 1.0 - self.eps


class SemDedupResult(NamedTuple):
    """Per row of the input: its cluster, the row it collapses onto (itself when kept) and their cosine."""

    cluster: np.ndarray  # (n,) int32
    survivor: np.ndarray  # (n,) int64 row index
    similarity: np.ndarray  # (n,) float32, 1 for kept rows
    centroids: np.ndarray  # (k, E) float32

    @property
    def kept(self) -> np.ndarray:
        return self.survivor == np.arange(len(self.survivor))


def cluster_count(rows: int, cfg: SemDedupConfig) -> int:
    """How many clusters `rows` rows get: cfg.clusters, else ~sqrt(rows), which balances the cost of assigning rows to
    centroids (rows x k) against comparing pairs within clusters (rows x rows / k); never more than the rows the
    k-means trains on."""
    train = min(rows, cfg.max_train_rows)
    k = cfg.clusters if cfg.clusters is not None else min(round(math.sqrt(rows)), train // MIN_POINTS_PER_CENTROID)
    return max(1, min(k, train))


def training_rows(rows: int, cfg: SemDedupConfig) -> np.ndarray:
    """Sorted indices of the rows k-means trains on: all of them, or a sample of max_train_rows fixed by the seed."""
    if rows <= cfg.max_train_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_train_rows, replace=False))


def train_centroids(sample: np.ndarray, clusters: int, cfg: SemDedupConfig) -> np.ndarray:
    """(k, E) float32 unit centroids of spherical k-means on `sample`, k = min(clusters, len(sample))."""
    import faiss  # here, not at import: Beam workers that only compare rows never load it

    x = np.ascontiguousarray(sample, np.float32)
    k = max(1, min(clusters, len(x)))
    if k == 1:  # faiss refuses one point; the mean direction is the one centroid
        mean = x.mean(0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)[None]
    kmeans = faiss.Kmeans(x.shape[1], k, niter=cfg.niter, seed=cfg.seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=len(x))  # fmt: skip
    kmeans.train(x)
    return np.asarray(kmeans.centroids, np.float32)


def assign_clusters(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) int32: the centroid of largest inner product (nearest on the sphere) of each row."""
    import faiss

    if len(x) == 0:
        return np.zeros(0, np.int32)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    _, nearest = index.search(np.ascontiguousarray(x, np.float32), 1)
    return nearest[:, 0].astype(np.int32)


def rank_rows(keys: Sequence[str], scores: np.ndarray | None = None) -> np.ndarray:
    """The order in which rows claim survivorship: best score first, then smallest key; by key without scores."""
    keys = np.asarray(keys, dtype=str)
    if scores is None:
        return np.argsort(keys, kind="stable")
    return np.lexsort((keys, -np.asarray(scores, np.float64)))


def dedup_ranked(x: np.ndarray, threshold: float, block: int = 1024, chunk: int = 8192) -> tuple[np.ndarray, ...]:
    """The greedy pass over rows already in rank order: (survivor position, cosine to it) per row.

    A row is a duplicate when its cosine with an earlier kept row exceeds `threshold`, and names the most similar
    such row (the earliest on a tie); otherwise it is kept and names itself.
    """
    m = len(x)
    x = np.ascontiguousarray(x, np.float32)
    survivor, similarity = np.arange(m), np.ones(m, np.float32)
    kept_rows = np.empty(m, np.int64)  # positions of kept rows, in order
    kept_vecs = np.empty_like(x)  # their vectors, contiguous for the products
    n_kept = 0
    for start in range(0, m, block):
        xb = x[start : start + block]  # (b, E)
        b = len(xb)
        best, best_sim = np.full(b, -1), np.full(b, -np.inf, np.float32)
        for c in range(0, n_kept, chunk):  # earlier blocks' survivors, chunk by chunk
            sims = xb @ kept_vecs[c : min(c + chunk, n_kept)].T  # (b, c)
            j = sims.argmax(1)
            top = sims[np.arange(b), j]
            better = top > best_sim  # strict: an earlier survivor wins a tie
            best[better], best_sim[better] = kept_rows[c + j[better]], top[better]
        alive = best_sim <= threshold
        within = xb @ xb.T  # (b, b)
        near = np.triu(within > threshold, 1)  # near[i, t]: i is earlier than t in the block and within eps
        for t in np.flatnonzero(near.any(0)):  # only rows with an earlier neighbour in the block need a look
            earlier = np.flatnonzero(near[:t, t] & alive[:t])
            if earlier.size:
                i = earlier[within[earlier, t].argmax()]
                if within[i, t] > best_sim[t]:
                    best[t], best_sim[t] = start + i, within[i, t]
                alive[t] = False
        dup = ~alive
        survivor[start : start + b][dup] = best[dup]
        similarity[start : start + b][dup] = best_sim[dup]
        new = np.flatnonzero(alive)
        kept_rows[n_kept : n_kept + new.size] = start + new
        kept_vecs[n_kept : n_kept + new.size] = xb[new]
        n_kept += new.size
    return survivor, similarity


def dedup_rows(
    x: np.ndarray, keys: Sequence[str], scores: np.ndarray | None, cfg: SemDedupConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One cluster's rows in any order -> (survivor row index, cosine to it) per row, in the same indexing."""
    order = rank_rows(keys, scores)
    ranked_survivor, ranked_sim = dedup_ranked(x[order], cfg.threshold, cfg.block, cfg.chunk)
    survivor, similarity = np.empty(len(x), np.int64), np.empty(len(x), np.float32)
    survivor[order] = order[ranked_survivor]
    similarity[order] = ranked_sim
    return survivor, similarity


def semdedup(
    image: np.ndarray,
    keys: Sequence[str],
    cfg: SemDedupConfig = SemDedupConfig(),
    scores: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> SemDedupResult:
    """The whole of semantic dedup in one process, on (n, E) L2-normalised image embeddings and their keys.

    What the Beam job does with its clusters spread over workers, and what the benchmark times: `timings`, when
    given, receives the seconds spent training the k-means ("train"), assigning rows ("assign") and deduplicating
    within clusters ("dedup").
    """
    image = np.ascontiguousarray(image, np.float32)
    n = len(image)
    if len(keys) != n or (scores is not None and len(scores) != n):
        raise ValueError(f"{n} embeddings but {len(keys)} keys" + ("" if scores is None else f", {len(scores)} scores"))
    keys = np.asarray(keys, dtype=str)
    clock = {} if timings is None else timings
    start = time.perf_counter()
    centroids = train_centroids(image[training_rows(n, cfg)], cluster_count(n, cfg), cfg) if n else np.zeros((0, 0))
    clock["train"] = time.perf_counter() - start
    cluster = assign_clusters(image, centroids) if n else np.zeros(0, np.int32)
    clock["assign"] = time.perf_counter() - start - clock["train"]
    survivor, similarity = np.arange(n), np.ones(n, np.float32)
    by_cluster = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[by_cluster])) + 1
    for rows in np.split(by_cluster, bounds) if n else []:
        local, sim = dedup_rows(image[rows], keys[rows], None if scores is None else scores[rows], cfg)
        survivor[rows], similarity[rows] = rows[local], sim
    clock["dedup"] = time.perf_counter() - start - clock["train"] - clock["assign"]
    return SemDedupResult(cluster, survivor, similarity, np.asarray(centroids, np.float32))
