"""Semantic dedup: the greedy survivor rule, blocked products equal to a brute-force pass, planted duplicates found
through k-means, and the same answer every time."""

import numpy as np
import pytest

from pipeline.filter.semdedup import (
    SemDedupConfig,
    assign_clusters,
    cluster_count,
    dedup_ranked,
    dedup_rows,
    rank_rows,
    semdedup,
    train_centroids,
    training_rows,
)


def _angles(*degrees: float) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x: np.ndarray, threshold: float) -> tuple[list[int], list[float]]:
    """The rule, spelled out: a row names the most similar earlier kept row above the threshold, else itself."""
    kept, survivor, similarity = [], [], []
    for t in range(len(x)):
        sims = [float(x[t] @ x[k]) for k in kept]
        best = int(np.argmax(sims)) if sims else -1
        if sims and sims[best] > threshold:
            survivor.append(kept[best])
            similarity.append(sims[best])
        else:
            kept.append(t)
            survivor.append(t)
            similarity.append(1.0)
    return survivor, similarity


def _planted(seed: int = 0, bases: int = 600, copies: int = 200, d: int = 32) -> tuple[np.ndarray, list[str], dict]:
    """Random unit vectors (b00000...) and near-copies of some of them (c00000..., cosine > 0.999 to their base)."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal((bases, d)))
    of = rng.choice(bases, copies)
    copy = _unit(base[of] + 0.02 * rng.standard_normal((copies, d)) / np.sqrt(d))
    keys = [f"b{i:05d}" for i in range(bases)] + [f"c{i:05d}" for i in range(copies)]
    return np.concatenate([base, copy]), keys, {bases + i: int(b) for i, b in enumerate(of)}


def test_greedy_rule_on_a_chain_keeps_both_ends() -> None:
    # A-B and B-C are within 20 degrees, A-C is not. B collapses onto A; C stays, because B was not kept (SemDeDup's
    # paper would drop C as well, leaving it no survivor to name).
    survivor, similarity = dedup_ranked(_angles(0, 15, 30), threshold=np.cos(np.radians(20)))
    assert survivor.tolist() == [0, 0, 2]
    assert similarity[1] == pytest.approx(np.cos(np.radians(15)), abs=1e-6) and similarity[2] == 1.0


def test_duplicate_names_the_most_similar_survivor() -> None:
    # A and C are 30 degrees apart (both kept); D at 20 degrees is within 25 of both, closer to C.
    survivor, _ = dedup_ranked(_angles(0, 30, 20), threshold=np.cos(np.radians(25)))
    assert survivor.tolist() == [0, 1, 1]
    # Exact copies tie: the earliest survivor is named.
    for block in (1, 1024):  # against earlier blocks' survivors, and within one block
        survivor, _ = dedup_ranked(_angles(0, 90, 0, 0), threshold=0.95, block=block)
        assert survivor.tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("block,chunk", [(1024, 8192), (7, 5), (1, 1), (64, 3)])
def test_blocked_pass_equals_brute_force(block: int, chunk: int) -> None:
    x, _, _ = _planted(seed=1, bases=150, copies=60, d=8)
    x = x[np.random.default_rng(2).permutation(len(x))]  # copies before and after their bases
    want, want_sim = _brute_force(x, 0.95)
    survivor, similarity = dedup_ranked(x, 0.95, block=block, chunk=chunk)
    assert survivor.tolist() == want
    np.testing.assert_allclose(similarity, want_sim, atol=1e-5)
    assert (survivor != np.arange(len(x))).sum() >= 50  # the planted copies are there to be found


def test_survivor_is_the_best_scored_copy_then_the_smallest_key() -> None:
    x = _angles(0, 1, 2, 90)
    keys = ["d", "b", "c", "a"]
    survivor, _ = dedup_rows(x, keys, None, SemDedupConfig())
    assert [keys[s] for s in survivor] == ["b", "b", "b", "a"]  # by key: b < c < d
    survivor, _ = dedup_rows(x, keys, np.array([0.2, 0.3, 0.35, 0.1]), SemDedupConfig())
    assert [keys[s] for s in survivor] == ["c", "c", "c", "a"]  # by score: c's caption fits its image best
    survivor, _ = dedup_rows(x, keys, np.array([0.3, 0.3, 0.2, 0.1]), SemDedupConfig())
    assert [keys[s] for s in survivor] == ["b", "b", "b", "a"]  # a tie on score falls back to the key
    assert rank_rows(["b", "a", "c"]).tolist() == [1, 0, 2]


def test_semdedup_finds_planted_copies_through_kmeans() -> None:
    x, keys, base_of = _planted()
    cfg = SemDedupConfig(eps=0.05, clusters=8, seed=0)
    result = semdedup(x, keys, cfg)
    assert result.centroids.shape == (8, 32) and set(result.cluster.tolist()) == set(range(8))
    copies = np.array(sorted(base_of))
    # Every copy collapses onto its base (a base's key sorts first), and nothing else collapses.
    assert result.survivor[copies].tolist() == [base_of[c] for c in copies]
    assert result.kept.tolist() == [i not in base_of for i in range(len(keys))]
    assert (result.similarity[copies] > 0.99).all() and (
        result.cluster[copies] == result.cluster[result.survivor[copies]]
    ).all()
    again = semdedup(x, keys, cfg)
    for a, b in zip(result, again, strict=True):
        np.testing.assert_array_equal(a, b)  # same embeddings, same config: the same answer


def test_semdedup_with_scores_keeps_the_best_scored_copy() -> None:
    x, keys, base_of = _planted(bases=100, copies=20)
    scores = np.zeros(len(keys))
    copy = min(base_of)
    scores[copy] = 0.5  # this copy's caption matches better than its base's
    result = semdedup(x, keys, SemDedupConfig(clusters=4), scores=scores)
    assert result.kept[copy] and result.survivor[base_of[copy]] == copy


def test_cluster_count_training_rows_and_centroids() -> None:
    cfg = SemDedupConfig()
    assert cluster_count(1_000_000, cfg) == 1000  # about sqrt(rows)
    assert cluster_count(100, cfg) == 2  # no fewer than 40 training rows a centroid
    assert cluster_count(10, SemDedupConfig(clusters=50)) == 10 and cluster_count(0, cfg) == 1
    assert training_rows(5, cfg).tolist() == [0, 1, 2, 3, 4]
    small = SemDedupConfig(max_train_rows=10, seed=3)
    picked = training_rows(1000, small)
    assert len(picked) == len(set(picked.tolist())) == 10 and (np.diff(picked) > 0).all()
    assert picked.tolist() == training_rows(1000, small).tolist()  # fixed by the seed
    assert picked.tolist() != training_rows(1000, SemDedupConfig(max_train_rows=10, seed=4)).tolist()
    one = train_centroids(_angles(0, 90), 1, cfg)
    np.testing.assert_allclose(one, _angles(45), atol=1e-6)  # the mean direction
    assert assign_clusters(_angles(10, 80, 350), np.eye(2, dtype=np.float32)).tolist() == [0, 1, 0]
    with pytest.raises(ValueError):
        SemDedupConfig(eps=-0.1)
