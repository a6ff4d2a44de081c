"""Retrying only what failed: an earlier dataset's transient rejections become candidates again, the rest carries."""

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.shard_reader import load_manifest
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


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # A hard link costs nothing, and is safe: our writers replace files by rename, never rewrite them in place.
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def carry_shards(old_root: str | os.PathLike, new_root: str | os.PathLike, shards: Iterable[ShardEntry]) -> None:
    """Put the earlier dataset's shards into the new one (hard links where possible), checking their recorded sizes.

    Rerunnable: a shard already carried is linked again, which changes nothing.
    """
    old, new = Path(old_root), Path(new_root)
    for shard in shards:
        for entry in (shard.tar, shard.parquet):
            src = old / entry.path
            if not src.is_file() or src.stat().st_size != entry.bytes:
                raise ValueError(f"{src}: missing or not the size its manifest records; verify the dataset first")
            _link_or_copy(src, new / entry.path)


def load_retry_source(path: str | os.PathLike) -> DatasetManifest:
    """The manifest of the dataset to retry; a clear error if it is not one of ours or has no rejections to read."""
    root = Path(path)
    if not (root / MANIFEST_NAME).is_file():
        raise ValueError(f"{root}: no {MANIFEST_NAME}; --retry-failed takes a dataset written by wit fetch or build")
    return load_manifest(root)


def _split(row: dict):
    if is_transient(row):
        Metrics.counter("retry", row[fields.REASON]).inc()
        return beam.pvalue.TaggedOutput(RETRY, candidate_from_rejection(row))
    return beam.pvalue.TaggedOutput(CARRIED, row)


class ReadFailed(beam.PTransform):
    """An earlier dataset's rejection parts -> `retry` (candidates to fetch again) and `carried` (rejection rows kept).

    Read through Beam's Parquet source, so the parts may live wherever Beam's FileSystems reach.
    """

    def __init__(self, dataset_dir: str, parts: Iterable[FileEntry]):
        super().__init__()
        self.paths = [str(Path(dataset_dir) / p.path) for p in parts]

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        return (
            pbegin
            | "Parts" >> beam.Create(self.paths)
            | "ReadParts" >> beam.io.ReadAllFromParquet()
            | "Split" >> beam.Map(_split).with_outputs(RETRY, CARRIED)
        )
