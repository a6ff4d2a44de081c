"""Retrying only what failed: an earlier dataset's transient rejections become candidates again, the rest carries."""

import os
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipeline import fsio
from pipeline.counters import Counters
from pipeline.shard_reader import load_manifest
from pipeline.shards import carry_files
from schemas import DatasetManifest, FileEntry, ShardEntry, fields, reasons
from schemas.manifest import MANIFEST_NAME

RETRY = "retry"
CARRIED = "carried"
# The candidate fields a rejection row keeps (it carries what a retry needs, so no join with the source is needed).
_CANDIDATE_FIELDS = (fields.KEY, fields.URL, fields.CAPTION, fields.PAGE_URL, fields.SOURCE, fields.SOURCE_ROW)


def is_transient(row: dict) -> bool:
    return row.get(fields.REASON) in reasons.TRANSIENT


def candidate_from_rejection(row: dict) -> dict:
    """The candidate a rejection row stood for, as far as the row knows it (key, URL, caption, page, source)."""
    return {name: row.get(name) for name in _CANDIDATE_FIELDS}


def carry_shards(old_root: str | os.PathLike, new_root: str | os.PathLike, shards: Iterable[ShardEntry]) -> None:
    """Put the earlier dataset's shards into the new one (hard links where possible), checking their recorded sizes."""
    carry_files(old_root, new_root, [entry for shard in shards for entry in (shard.tar, shard.parquet)])


def load_retry_source(path: str | os.PathLike) -> DatasetManifest:
    """The manifest of the dataset to retry; a clear error if it is not one of ours or has no rejections to read."""
    if not fsio.is_file(fsio.join(path, MANIFEST_NAME)):
        raise ValueError(f"{path}: no {MANIFEST_NAME}; --retry-failed takes a dataset written by wit fetch or build")
    return load_manifest(path)


class _Split(beam.DoFn):
    """A rejection row -> a candidate to fetch again (`retry`, counted by reason) or the row carried as it is."""

    def setup(self) -> None:
        self.counters = Counters("retry")

    def process(self, row: dict) -> Iterator:
        if is_transient(row):
            self.counters.inc(row[fields.REASON])
            yield beam.pvalue.TaggedOutput(RETRY, candidate_from_rejection(row))
        else:
            yield beam.pvalue.TaggedOutput(CARRIED, row)


class ReadFailed(beam.PTransform):
    """An earlier dataset's rejection parts -> `retry` (candidates to fetch again) and `carried` (rejection rows kept).

    Read through Beam's Parquet source, so the parts may live wherever Beam's FileSystems reach.
    """

    def __init__(self, dataset_dir: str, parts: Iterable[FileEntry]):
        super().__init__()
        self.paths = [fsio.join(dataset_dir, p.path) for p in parts]

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        return (
            pbegin
            | "Parts" >> beam.Create(self.paths)
            | "ReadParts" >> beam.io.ReadAllFromParquet()
            | "Split" >> beam.ParDo(_Split()).with_outputs(RETRY, CARRIED)
        )
