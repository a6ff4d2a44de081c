"""The dataset-writing stage in Beam: candidates' outcomes into shard buckets, resumable, then the manifest last."""

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import fsio
from pipeline.shards import finalize_dataset, renumber_shards, write_file_atomic, write_rejections, write_shard
from pipeline.spill import Spill, read_spilled
from schemas import FileEntry, ShardEntry, fields
from schemas.manifest import SHARDS_DIR

MARKER_PREFIX = ".bucket-"  # hidden: readers trust the manifest, these only serve a rerun
WORK_DIR = ".work"  # a job's scratch files inside its output folder (spills): hidden, removed when it is done


def bucket(key: str, buckets: int) -> int:
    """A key's bucket (its shard and rejection part): stable across runs, runners and Python's hash seed."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % buckets


def buckets_for(candidates: int, per_bucket: int) -> int:
    """Buckets sized by candidates, as img2dataset sizes shards by input rows: known before anything is fetched,
    so a rerun can tell which buckets are already done."""
    return max(1, math.ceil(candidates / per_bucket))


@dataclass(frozen=True)
class Carried:
    """What a new dataset takes over from earlier work as it is: listed in its manifest, never rewritten.

    A retry carries the earlier version's shards; a build carries the rejection parts of its fetch phase, with their
    funnel counts.
    """

    shards: tuple[ShardEntry, ...] = ()
    rejected: tuple[FileEntry, ...] = ()
    counts: dict = dataclasses.field(default_factory=dict)  # {stage: {reason: n}} of the carried rejections

    def first_index(self) -> int:
        """Where new shards and parts start numbering: after everything carried, so names never collide."""
        numbers = [int(s.name) for s in self.shards if s.name.isdigit()]
        numbers += [int(d) for f in self.rejected if (d := PurePosixPath(f.path).stem.rpartition("-")[2]).isdigit()]
        return max(numbers, default=-1) + 1


def run_fingerprint(config: dict) -> str:
    """What a bucket marker must match to be reused: the same job config (input pattern included)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BucketResult:
    """What one bucket wrote: its shard (None if nothing was kept), its rejection part, and its reason counts."""

    index: int
    buckets: int
    fingerprint: str
    shard: ShardEntry | None
    rejected: FileEntry | None
    counts: dict  # {stage: {reason: n}}

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "buckets": self.buckets,
                "fingerprint": self.fingerprint,
                "shard": None if self.shard is None else dataclasses.asdict(self.shard),
                "rejected": None if self.rejected is None else dataclasses.asdict(self.rejected),
                "counts": self.counts,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "BucketResult":
        d = json.loads(text)
        return cls(
            index=d["index"],
            buckets=d["buckets"],
            fingerprint=d["fingerprint"],
            shard=None if d["shard"] is None else ShardEntry.from_dict(d["shard"]),
            rejected=None if d["rejected"] is None else FileEntry(**d["rejected"]),
            counts=d["counts"],
        )


def write_bucket(
    root: str, index: int, buckets: int, fingerprint: str, samples, rejections, first: int = 0
) -> BucketResult:
    """Write one bucket's shard (from (row, image) pairs in memory) and rejection part, then its marker last."""
    samples = list(samples)
    write = lambda shard: write_shard(root, shard, samples) if samples else None  # noqa: E731
    return write_bucket_files(root, index, buckets, fingerprint, write, rejections, first)


def write_bucket_files(
    root: str,
    index: int,
    buckets: int,
    fingerprint: str,
    write_samples: Callable[[int], ShardEntry | None],
    rejections: Iterable[dict],
    first: int = 0,
    marker: bool = True,
) -> BucketResult:
    """Write one bucket: `write_samples(shard number)` writes its shard (None if nothing was kept), then its rejection
    part, then its marker last: a marker means the bucket is whole (a job that is not resumable writes none).

    The shard and part are numbered `first + index`: a new version of a dataset numbers after the shards it carries.
    """
    rejections = list(rejections)
    shard = write_samples(first + index)
    part = write_rejections(root, f"part-{first + index:05d}", rejections) if rejections else None
    counts: dict = {}
    for (stage, reason), n in sorted(Counter((r[fields.STAGE], r[fields.REASON]) for r in rejections).items()):
        counts.setdefault(stage, {})[reason] = n
    result = BucketResult(index, buckets, fingerprint, shard, part, counts)
    if marker:
        fsio.mkdirs(fsio.join(root, SHARDS_DIR))  # a bucket that kept nothing wrote no shard, so made no folder
        write_file_atomic(root, f"{SHARDS_DIR}/{MARKER_PREFIX}{index:05d}.json", result.to_json().encode())
    return result


def completed_buckets(root: str, fingerprint: str) -> dict[int, BucketResult]:
    """Buckets an earlier run of the same job finished, whose files are still there at their recorded sizes."""
    done = {}
    for marker in fsio.list_files(fsio.join(root, SHARDS_DIR), f"{MARKER_PREFIX}*.json"):
        try:
            result = BucketResult.from_json(fsio.read_text(marker))
        except (ValueError, KeyError, TypeError):
            continue  # a marker we cannot read is a bucket to redo
        files = ([result.shard.tar, result.shard.parquet] if result.shard else []) + (
            [result.rejected] if result.rejected else []
        )
        intact = all(fsio.size(fsio.join(root, f.path)) == f.bytes for f in files)
        if result.fingerprint == fingerprint and intact:
            done[result.index] = result
    return done


def _finalize(root: str, results: list[BucketResult], config: dict, carried: Carried, contiguous: bool):
    counts: dict = {}
    for by_stage in [carried.counts] + [r.counts for r in results]:
        for stage, by_reason in by_stage.items():
            for reason, n in by_reason.items():
                counts.setdefault(stage, {})[reason] = counts.get(stage, {}).get(reason, 0) + n
    new = [r.shard for r in results if r.shard]
    if contiguous:
        new = renumber_shards(root, new, start=Carried(shards=carried.shards).first_index())
    shards = list(carried.shards) + new
    parts = list(carried.rejected) + [r.rejected for r in results if r.rejected]
    Metrics.counter("shards", "shards").inc(len(shards))
    return finalize_dataset(root, shards, parts, counts, config)


class FinalizeDataset(beam.PTransform):
    """BucketResults -> the one DatasetManifest, written once every bucket is done, with the reused `done` buckets
    of an earlier run (those of the same bucket count that this run did not redo) and what is carried."""

    def __init__(
        self,
        root: str,
        config: dict,
        buckets: Any,
        done: dict | None = None,
        carried: Carried | None = None,
        contiguous: bool = False,
    ):
        super().__init__()
        self.root = root
        self.config = config
        self.buckets = buckets  # an int, or a singleton side input of one
        self.done = done or {}
        self.carried = carried or Carried()
        self.contiguous = contiguous

    def expand(self, written: beam.PCollection) -> beam.PCollection:
        root, config, done, carried, contiguous = self.root, self.config, self.done, self.carried, self.contiguous

        def finalize(_, new: list[BucketResult], buckets: int):
            reused = [r for r in done.values() if r.buckets == buckets and r.index not in {x.index for x in new}]
            return _finalize(root, sorted(new + reused, key=lambda r: r.index), config, carried, contiguous)

        return (
            written.pipeline
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(finalize, beam.pvalue.AsList(written), self.buckets)
        )


class WriteRejections(beam.PTransform):
    """REJECTION_SCHEMA rows (one PCollection or a tuple of them) -> rejection parts `part-<first + i>` (i < `parts`,
    by a hash of the key), one BucketResult each (its file and reason counts). Rows reach their part through spill
    files, not a shuffle."""

    def __init__(self, root: str, parts: int, work: str, first: int = 0):
        super().__init__()
        self.root = root
        self.parts = parts
        self.work = work
        self.first = first

    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, rows: Any) -> beam.PCollection:
        root, parts, first = self.root, self.parts, self.first
        inputs = rows if isinstance(rows, tuple | list) else (rows,)
        keyed = tuple(
            pc | f"ToPart{i}" >> beam.Map(lambda r: (bucket(r[fields.KEY], parts), r)) for i, pc in enumerate(inputs)
        )
        return (
            keyed
            | "Spill" >> Spill(fsio.join(self.work, "rejected"))
            | "Write"
            >> beam.MapTuple(
                lambda i, paths: write_bucket_files(
                    root, i, parts, "", lambda _: None, read_spilled(paths), first, marker=False
                )
            )
        )
