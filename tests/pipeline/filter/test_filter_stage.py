"""The filter stage: per-shard judging, per-cluster dedup, the per-sample decision, and the Beam wiring of the three
on a hand-made embeddings folder whose every verdict is known."""

import hashlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from clipmodel.embed import embeddings as emb
from pipeline.filter.clip_score import ClipScoreConfig
from pipeline.filter.plan import FilterPlan, embeddings_info, make_plan, read_embedding_shard, training_sample
from pipeline.filter.references import References
from pipeline.filter.semdedup import SemDedupConfig, semdedup
from pipeline.filter.stage import NO_CLUSTER, FilterSamples, decide, dedup_cluster, judge_rows
from schemas import fields, reasons
from schemas.reasons import REJECTED

D = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _text_at(image: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` to each image row (a caption embedding with a known CLIP score)."""
    noise = rng.standard_normal(image.shape)
    perp = _unit(noise - (noise * image).sum(-1, keepdims=True) * image)
    return _unit(cosine * image + np.sqrt(1 - cosine**2) * perp)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 samples k00..k11 in two embeddings shards, each planted for one outcome; k12 has no embedding."""
    rng = np.random.default_rng(0)
    image = _unit(rng.standard_normal((12, D)))
    image[3] = _unit(image[4] + 0.01 * rng.standard_normal(D))  # k03, k05: copies of k04
    image[5] = _unit(image[4] + 0.01 * rng.standard_normal(D))
    image[6] = _unit(image[0] + 0.01 * rng.standard_normal(D))  # a copy of k00, which is dropped for its score
    scores = np.array([0.1, 0.1, 0.5, 0.5, 0.6, 0.5, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5])
    text = np.stack([_text_at(image[i], scores[i], rng) for i in range(12)])
    keys = [f"k{i:02d}" for i in range(12)]
    root = tmp_path_factory.mktemp("emb")
    for shard, rows in enumerate((range(0, 4), range(4, 12))):
        rows = list(rows)
        emb.write_shard(root, shard, [keys[i] for i in rows], [None] * len(rows), [None] * len(rows),
                        image[rows], text[rows])  # fmt: skip
    eval_refs = References(
        reasons.EVAL_SIMILAR, ("eval/0.png",), _unit(image[1] + 0.01 * rng.standard_normal(D))[None], 0.9
    )
    concept_vectors = _unit(image[[2, 1]] + 0.01 * rng.standard_normal((2, D)))
    concepts = References(reasons.UNWANTED_CONCEPT, ("a gun", "a logo"), concept_vectors, 0.9)
    return {"root": root, "keys": keys, "image": image, "refs": (eval_refs, concepts)}


def _plan(planted: dict) -> FilterPlan:
    info = {"dim": D, "shards": [{"index": 0, "rows": 4}, {"index": 1, "rows": 8}], "complete": True}
    return make_plan(planted["root"], info, ClipScoreConfig(min_score=0.3), planted["refs"], SemDedupConfig(clusters=2))


EXPECTED_REJECTED = {
    ("k00", reasons.LOW_CLIP_SCORE),
    ("k01", reasons.EVAL_SIMILAR),  # a concept hit too: decontamination comes first
    ("k02", reasons.UNWANTED_CONCEPT),
    ("k03", reasons.SEMANTIC_DUPLICATE),
    ("k05", reasons.SEMANTIC_DUPLICATE),
    ("k12", reasons.NO_EMBEDDING),
}


def test_judge_rows_applies_references_in_order(planted: dict) -> None:
    plan = _plan(planted)
    keys, image, text = read_embedding_shard(planted["root"], 0)
    judged, scores, batches = judge_rows(keys, image, text, plan)
    np.testing.assert_allclose(scores, [0.1, 0.1, 0.5, 0.5], atol=2e-3)  # float16 storage
    by_key = dict(judged)
    assert by_key["k01"][2:] == (reasons.EVAL_SIMILAR, by_key["k01"][3]) and by_key["k01"][3].startswith("eval/0.png")
    assert by_key["k02"][2] == reasons.UNWANTED_CONCEPT and by_key["k02"][3].startswith("a gun (cos 0.99")
    assert by_key["k00"][2] is None and by_key["k03"][2] is None
    # Rows a reference rejects never reach the dedup; the rest travel by cluster, as float16.
    assert sorted(k for ks, _, _ in batches.values() for k in ks) == ["k00", "k03"]
    assert all(vecs.dtype == np.float16 for _, vecs, _ in batches.values())


def test_dedup_cluster_filters_by_score_first() -> None:
    a = np.array([[1.0, 0.0]], np.float16)
    batches = [(["x", "y"], np.concatenate([a, a]), np.array([0.2, 0.5], np.float32)),
               (["z"], a, np.array([0.4], np.float32))]  # fmt: skip
    assert dict(dedup_cluster(batches, None, SemDedupConfig())) == {
        "y": ("y", 1.0, 2), "z": ("y", 1.0, 0), "x": ("y", 1.0, 0)
    }  # fmt: skip
    # x fails the score threshold: it is not deduplicated (its verdict is LOW_CLIP_SCORE) and stands for nothing.
    assert dict(dedup_cluster(batches, 0.3, SemDedupConfig())) == {"y": ("y", 1.0, 1), "z": ("y", 1.0, 0)}


def test_decide_in_filter_order() -> None:
    row = {fields.KEY: "k", fields.URL: "http://x/k.jpg", fields.CAPTION: "a cat", fields.SEM_GROUP: "old"}
    tag, out = decide(row, None, None, 0.3)
    assert (tag, out[fields.REASON], out[fields.STAGE]) == (REJECTED, reasons.NO_EMBEDDING, reasons.SCORE)
    tag, out = decide(row, (0.1, 2, reasons.EVAL_SIMILAR, "e.png (cos 0.95)"), None, 0.3)
    assert (out[fields.REASON], out[fields.DETAIL], out[fields.URL]) == (
        reasons.EVAL_SIMILAR,
        "e.png (cos 0.95)",
        row[fields.URL],
    )
    tag, out = decide(row, (0.25, 2, None, None), None, 0.3)
    assert (out[fields.REASON], out[fields.DETAIL]) == (reasons.LOW_CLIP_SCORE, "clip_score 0.2500 < 0.3000")
    tag, out = decide(row, (0.35, 2, None, None), ("s", 0.97, 0), 0.3)
    assert (out[fields.REASON], out[fields.DETAIL]) == (reasons.SEMANTIC_DUPLICATE, "s")
    tag, out = decide(row, (0.35, 2, None, None), ("k", 1.0, 3), 0.3)
    assert tag == "kept" and (out[fields.CLIP_SCORE], out[fields.SEM_CLUSTER], out[fields.SEM_GROUP]) == (0.35, 2, "k")
    tag, out = decide(row, (0.35, NO_CLUSTER, None, None), None, None)  # no dedup, no threshold
    assert tag == "kept" and (out[fields.SEM_CLUSTER], out[fields.SEM_GROUP]) == (None, None)  # old group cleared


def test_filter_samples_in_beam(planted: dict) -> None:
    plan = _plan(planted)
    samples = [(f"k{i:02d}", (i % 3, {fields.KEY: f"k{i:02d}", fields.CAPTION: f"c{i}"})) for i in range(13)]
    kept_keys = sorted({f"k{i:02d}" for i in range(13)} - {k for k, _ in EXPECTED_REJECTED})
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(samples) | FilterSamples(plan)
        kept = out.kept | "KeptKeys" >> beam.Map(lambda s: (s[1][fields.KEY], s[1][fields.SEM_GROUP], s[0]))
        want = [(k, "k04" if k == "k04" else None, int(k[1:]) % 3) for k in kept_keys]  # the source shard travels
        assert_that(kept, equal_to(want), label="Kept")
        rejected = out[REJECTED] | "Reasons" >> beam.Map(lambda r: (r[fields.KEY], r[fields.REASON]))
        assert_that(rejected, equal_to(sorted(EXPECTED_REJECTED)), label="Rejected")
        dups = out[REJECTED] | "Dups" >> beam.Filter(lambda r: r[fields.REASON] == reasons.SEMANTIC_DUPLICATE)
        assert_that(dups | beam.Map(lambda r: r[fields.DETAIL]), equal_to(["k04", "k04"]), label="Survivor")


def test_plan_samples_what_semdedup_samples(planted: dict) -> None:
    # The job's k-means trains on the rows semdedup() would take from the concatenated matrix: same centroids.
    cfg = SemDedupConfig(clusters=2, max_train_rows=5, seed=1)
    shards = [(0, 4), (1, 8)]
    image = np.concatenate([read_embedding_shard(planted["root"], i)[1] for i, _ in shards])
    sample = training_sample(planted["root"], shards, cfg)
    assert sample.shape == (5, D)
    info = {"dim": D, "shards": [{"index": i, "rows": n} for i, n in shards], "complete": True}
    plan = make_plan(planted["root"], info, ClipScoreConfig(), (), cfg)
    np.testing.assert_array_equal(plan.centroids, semdedup(image, planted["keys"], cfg).centroids)


def test_embeddings_of_another_dataset_are_refused(tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        embeddings_info(tmp_path / "nothing", dataset)
    emb.write_info(tmp_path / "emb", {"complete": False})
    with pytest.raises(ValueError, match="did not finish"):
        embeddings_info(tmp_path / "emb", dataset)
    emb.write_info(tmp_path / "emb", {"complete": True, "dataset_manifest_sha256": "0" * 64})
    with pytest.raises(ValueError, match="another dataset"):
        embeddings_info(tmp_path / "emb", dataset)
    sha = hashlib.sha256(b"{}").hexdigest()
    emb.write_info(tmp_path / "emb", {"complete": True, "dataset_manifest_sha256": sha})
    assert embeddings_info(tmp_path / "emb", dataset)["complete"]
