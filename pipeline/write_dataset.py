"""The dataset-writing stage in Beam: samples into shards, rejections into parts, then the manifest last."""

import hashlib
import math
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.shards import finalize_dataset, write_rejections, write_shard
from schemas import fields

REJECTIONS_PER_PART = 200_000


def bucket(key: str, buckets: int) -> int:
    """A key's shard (or rejection part): stable across runs, runners and Python's hash seed."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % buckets


def buckets_for(count: int, per_bucket: int) -> int:
    return max(1, math.ceil(count / per_bucket))


def _funnel(stage_reason_counts: list[tuple[tuple[str, str], int]], extra: dict) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for (stage, reason), n in stage_reason_counts:
        counts.setdefault(stage, {})[reason] = counts.get(stage, {}).get(reason, 0) + n
    for stage, by_reason in extra.items():
        for reason, n in by_reason.items():
            counts.setdefault(stage, {})[reason] = counts.get(stage, {}).get(reason, 0) + n
    return counts


class WriteDataset(beam.PTransform):
    """{"samples": (row, image bytes), "rejected": REJECTION_SCHEMA rows} -> a dataset at `dataset_dir`.

    Shards are buckets of a hash of the key, sized from the sample count (about `samples_per_shard` each, not
    exactly: a global sort would cost a shuffle of every image); inside a shard samples are in key order, so the
    same samples give byte-identical shards on any runner. The manifest is written once, after every shard.
    """

    def __init__(self, dataset_dir: str, samples_per_shard: int, config: dict, counts: dict | None = None):
        super().__init__()
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        self.dataset_dir = dataset_dir
        self.samples_per_shard = samples_per_shard
        self.config = config
        self.counts = counts or {}

    # inputs: {"samples": PCollection, "rejected": PCollection}; returns a PCollection of the one DatasetManifest.
    def expand(self, inputs: Any) -> Any:
        root, per_shard = self.dataset_dir, self.samples_per_shard
        samples, rejected = inputs["samples"], inputs["rejected"]

        n_samples = samples | "CountSamples" >> beam.combiners.Count.Globally()
        shards = (
            samples
            | "ShardOf"
            >> beam.Map(
                lambda s, n: (bucket(s[0][fields.KEY], buckets_for(n, per_shard)), s),
                n=beam.pvalue.AsSingleton(n_samples),
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.MapTuple(lambda index, items: write_shard(root, index, items))
        )
        n_rejected = rejected | "CountRejected" >> beam.combiners.Count.Globally()
        parts = (
            rejected
            | "PartOf"
            >> beam.Map(
                lambda r, n: (bucket(r[fields.KEY], buckets_for(n, REJECTIONS_PER_PART)), r),
                n=beam.pvalue.AsSingleton(n_rejected),
            )
            | "GroupParts" >> beam.GroupByKey()
            | "WritePart" >> beam.MapTuple(lambda index, rows: write_rejections(root, f"part-{index:05d}", rows))
        )
        funnel = (
            rejected
            | "StageReason" >> beam.Map(lambda r: ((r[fields.STAGE], r[fields.REASON]), 1))
            | "CountReasons" >> beam.CombinePerKey(sum)
        )
        extra, config = self.counts, self.config

        def finalize(_, shard_entries, part_entries, reason_counts):
            Metrics.counter("shards", "shards").inc(len(shard_entries))
            return finalize_dataset(root, shard_entries, part_entries, _funnel(reason_counts, extra), config)

        return (
            samples.pipeline
            | "Once" >> beam.Create([None])
            | "Finalize"
            >> beam.Map(
                finalize,
                beam.pvalue.AsList(shards),
                beam.pvalue.AsList(parts),
                beam.pvalue.AsList(funnel),
            )
        )
