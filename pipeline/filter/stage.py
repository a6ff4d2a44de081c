"""The filter stage in Beam: a dataset's samples joined with their embeddings, judged, and split into kept samples
(with clip_score, sem_cluster and sem_group set) and rejections, each sample exactly once.

1. Judge (per embeddings shard): CLIP scores, the nearest evaluation image and unwanted-concept prompt, and the k-means
   cluster of every row. Rows a reference set rejects leave the dedup here.
2. Threshold: every score into one CLIP-score threshold (a quantile needs them all), a singleton side input.
3. Dedup (per cluster, GroupByKey): the rows that pass the threshold, deduplicated (semdedup.dedup_rows).
4. Decide (per key, CoGroupByKey with the sample rows): the first filter that rejects a sample names it, in the order
   decontamination, concepts, CLIP score, semantic dedup; a sample with no embedding is NO_EMBEDDING.
Only embeddings and rows travel; the images of the kept samples are copied afterwards (pipeline.reshard).
"""

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from pipeline.counters import Counters
from pipeline.filter.clip_score import ScoreThreshold, clip_scores, low_score_detail, passes
from pipeline.filter.plan import FilterPlan, read_embedding_shard
from pipeline.filter.semdedup import SemDedupConfig, assign_clusters, dedup_rows
from pipeline.rejection import rejection_row
from schemas import fields, reasons
from schemas.reasons import REJECTED

SCORES = "scores"
VECTORS = "vectors"
NO_CLUSTER = -1
# (clip score, cluster or NO_CLUSTER, reason code or None, detail or None): what step 1 says of one sample.
Judged = tuple
# (survivor key, cosine to it, how many duplicates it stands for): what step 3 says of one sample.
Outcome = tuple


def judge_rows(
    keys: list[str], image: np.ndarray, text: np.ndarray, plan: FilterPlan
) -> tuple[list[tuple[str, Judged]], np.ndarray, dict[int, tuple[list[str], np.ndarray, np.ndarray]]]:
    """Step 1 on one shard's rows: (key, Judged) per row, the scores, and {cluster: (keys, image fp16, scores)} of the
    rows no reference set rejected (empty when dedup is off)."""
    scores = clip_scores(image, text)
    reason: list[str | None] = [None] * len(keys)
    detail: list[str | None] = [None] * len(keys)
    for ref in plan.references:  # in precedence order: the first hit stands
        for i, hit in enumerate(ref.hits(image)):
            if hit is not None and reason[i] is None:
                reason[i], detail[i] = ref.reason, hit
    clustered = plan.semdedup is not None and plan.centroids is not None
    cluster = assign_clusters(image, plan.centroids) if clustered else np.full(len(keys), NO_CLUSTER, np.int32)
    judged = [
        (k, (float(s), int(c), r, d))
        for k, s, c, r, d in zip(keys, scores.tolist(), cluster.tolist(), reason, detail, strict=True)
    ]
    batches: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}
    if clustered:
        rows_of: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(cluster.tolist()):
            if reason[i] is None:
                rows_of[c].append(i)
        for c, rows in sorted(rows_of.items()):
            # float16: what the encoder stored, so nothing is lost, at half the bytes through the shuffle.
            batches[c] = ([keys[i] for i in rows], image[rows].astype(np.float16), scores[rows])
    return judged, scores, batches


def dedup_cluster(
    batches: list[tuple[list[str], np.ndarray, np.ndarray]], threshold: float | None, cfg: SemDedupConfig
) -> Iterator[tuple[str, Outcome]]:
    """Step 3 on one cluster's batches: (key, Outcome) for each row that passes the CLIP-score threshold."""
    keys = np.asarray([k for b in batches for k in b[0]], dtype=str)
    if not len(keys):
        return
    x = np.concatenate([b[1] for b in batches]).astype(np.float32)
    scores = np.concatenate([b[2] for b in batches])
    keep = np.flatnonzero(passes(scores, threshold))
    keys, x, scores = keys[keep], x[keep], scores[keep]
    survivor, similarity = dedup_rows(x, keys, scores, cfg)
    stands_for = np.bincount(survivor, minlength=len(keys)) - 1  # every row names itself or its survivor
    for i, key in enumerate(keys.tolist()):
        s = int(survivor[i])
        yield key, (str(keys[s]), float(similarity[i]), int(stands_for[i]) if s == i else 0)


def decide(row: dict, judged: Judged | None, outcome: Outcome | None, threshold: float | None) -> tuple[str, dict]:
    """Step 4: ("kept", row with clip_score, sem_cluster, sem_group) or (REJECTED, rejection row)."""
    if judged is None:
        return REJECTED, rejection_row(row, reasons.NO_EMBEDDING)
    score, cluster, reason, detail = judged
    if reason is not None:
        return REJECTED, rejection_row(row, reason, detail)
    if not passes(score, threshold):
        return REJECTED, rejection_row(row, reasons.LOW_CLIP_SCORE, low_score_detail(score, threshold))
    key = row[fields.KEY]
    survivor, _, stands_for = outcome if outcome is not None else (key, 1.0, 0)
    if survivor != key:
        return REJECTED, rejection_row(row, reasons.SEMANTIC_DUPLICATE, survivor)
    kept = dict(row)
    kept[fields.CLIP_SCORE] = score
    kept[fields.SEM_CLUSTER] = None if cluster == NO_CLUSTER else cluster
    kept[fields.SEM_GROUP] = key if stands_for else None  # a row from an earlier filter run loses its old group
    return "kept", kept


class _Judge(beam.DoFn):
    def __init__(self, plan: FilterPlan):
        self.plan = plan

    def setup(self) -> None:
        self.counters = Counters("filter")

    def process(self, shard: int) -> Iterator:
        keys, image, text = read_embedding_shard(self.plan.embeddings, shard)
        judged, scores, batches = judge_rows(keys, image, text, self.plan)
        self.counters.inc("embeddings", len(keys))
        yield from judged
        yield beam.pvalue.TaggedOutput(SCORES, scores)
        for cluster, batch in batches.items():
            yield beam.pvalue.TaggedOutput(VECTORS, (cluster, batch))


class _Dedup(beam.DoFn):
    def __init__(self, cfg: SemDedupConfig):
        self.cfg = cfg

    def setup(self) -> None:
        self.counters = Counters("filter")

    def process(self, element: tuple, threshold: Any) -> Iterator:
        _, batches = element
        self.counters.inc("clusters")
        yield from dedup_cluster(list(batches), threshold, self.cfg)


class _Decide(beam.DoFn):
    def setup(self) -> None:
        self.counters = Counters("filter")

    def process(self, element: tuple, threshold: Any) -> Iterator:
        _, g = element
        judged = g["judged"][0] if g["judged"] else None
        outcome = g["outcome"][0] if g.get("outcome") else None  # none at all when dedup is off
        if not g["sample"]:  # an embedding whose sample is gone: nothing to write, but worth knowing
            self.counters.inc("embedding_without_sample")
        for source, row in g["sample"]:
            tag, out = decide(row, judged, outcome, threshold)
            self.counters.inc("kept" if tag == "kept" else out[fields.REASON])
            yield (source, out) if tag == "kept" else beam.pvalue.TaggedOutput(REJECTED, out)


class FilterSamples(beam.PTransform):
    """(key, (source shard index, sample row)) -> `kept` (source shard index, row with the filter's fields set) and
    `rejected` (REJECTION_SCHEMA rows); the embeddings are read from `plan.embeddings`, shard by shard. Images never
    come here: the caller copies the kept samples' images from their source shards (pipeline.reshard)."""

    def __init__(self, plan: FilterPlan):
        super().__init__()
        self.plan = plan

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, samples: beam.PCollection) -> Any:
        plan = self.plan
        judged = (
            samples.pipeline
            | "EmbeddingShards" >> beam.Create(list(plan.shards))
            | "Spread" >> beam.Reshuffle()
            | "Judge" >> beam.ParDo(_Judge(plan)).with_outputs(SCORES, VECTORS, main="judged")
        )
        threshold = beam.pvalue.AsSingleton(
            judged[SCORES] | "Threshold" >> beam.CombineGlobally(ScoreThreshold(plan.clip_score))
        )
        joined = {"sample": samples, "judged": judged.judged}
        if plan.semdedup is not None:
            joined["outcome"] = (
                judged[VECTORS]
                | "ByCluster" >> beam.GroupByKey()
                | "Dedup" >> beam.ParDo(_Dedup(plan.semdedup), threshold)
            )
        return (
            joined
            | "Join" >> beam.CoGroupByKey()
            | "Decide" >> beam.ParDo(_Decide(), threshold).with_outputs(REJECTED, main="kept")
        )
