"""Shard writer: WebDataset tar + Parquet shards, rejections, sizes.json and manifest.json, atomic and deterministic."""

import hashlib
import io
import json
import math
import os
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsio
from schemas import (
    REJECTION_SCHEMA,
    SAMPLE_SCHEMA,
    DatasetManifest,
    FileEntry,
    ShardEntry,
    fields,
    reasons,
    shard_name,
    validate_key,
)
from schemas.manifest import MANIFEST_NAME, REJECTED_DIR, SHARDS_DIR, SIZES_NAME
from schemas.records import conform

# Fixed tar metadata: with the sorted member order, a shard's bytes depend on its samples only. The date is
# 2000-01-01, not 0, because GNU tar warns about "implausibly old" time stamps at the epoch.
TAR_MTIME = 946_684_800
TAR_MODE = 0o644
# Fixed Parquet options: byte-identical files need identical writer settings as well as identical rows.
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "row_group_size": 10_000,
    "use_dictionary": True,
    "write_statistics": True,
}
KEPT = "kept"  # the funnel's count of candidates a stage let through, beside its reason codes
TMP_SUFFIX = fsio.TMP_SUFFIX


class _HashingFile:
    """A write-only wrapper that hashes and counts what passes through, so no file is read back to checksum it."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:  # tarfile asks where it is when it opens
        return self.size

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@contextmanager
def _atomic_file(final: str) -> Iterator[_HashingFile]:
    """Write under a hidden name unique to this writer (fsynced when local), then rename: `final` is whole or absent."""
    with fsio.atomic_write(final) as raw:
        yield _HashingFile(raw)


def _write_atomic(final: str, rel: str, write) -> FileEntry:
    fsio.remove_stale_temps(final)
    with _atomic_file(final) as out:
        write(out)
    return FileEntry(path=rel, bytes=out.size, sha256=out.hexdigest())


def write_file_atomic(root: str | os.PathLike, rel: str, data: bytes) -> FileEntry:
    """Write `root/rel` atomically (temp name, fsync, rename) and return its entry; root may be any Beam path."""
    return _write_atomic(fsio.join(root, rel), rel, lambda out: out.write(data))


def _invalidate_manifest(root: str) -> None:
    """Remove manifest.json and sizes.json before any file of the dataset changes.

    Otherwise a rerun killed midway would leave the old manifest describing a mix of old and new shards.
    """
    removed = False
    for name in (MANIFEST_NAME, SIZES_NAME, f"{SHARDS_DIR}/{SIZES_NAME}"):
        removed |= fsio.remove(fsio.join(root, name))
    if removed:
        fsio.fsync_dir(root)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def code_version() -> str:
    """The installed wit-builder version for manifests (no commit hash or time, so manifests stay reproducible)."""
    try:
        return metadata.version("wit-builder")
    except metadata.PackageNotFoundError:
        return "unknown"


def image_ext(row: Mapping) -> str:
    """The tar extension of a sample's image member, from its image_format; ValueError if it is not one we store."""
    fmt = row.get(fields.IMAGE_FORMAT)
    if fmt not in fields.IMAGE_FORMATS:
        raise ValueError(
            f"sample {row.get(fields.KEY)!r}: {fields.IMAGE_FORMAT} {fmt!r} is not one of {list(fields.IMAGE_FORMATS)}"
        )
    return fmt


def _fill(row: dict, name: str, value: object) -> None:
    """Set a field the writer knows the truth of; a caller's different value is a bug upstream, so say so."""
    if row.get(name) is None:
        row[name] = value
    elif row[name] != value:
        raise ValueError(f"sample {row.get(fields.KEY)!r}: {name} is {row[name]!r}, but the shard stores {value!r}")


def _prepare_rows(rows: Iterable[Mapping]) -> list[dict]:
    """Validate keys and formats, fill status, and sort by key so arrival order never shows in a shard."""
    prepared = []
    for row in rows:
        validate_key(row.get(fields.KEY))
        row = dict(row)
        image_ext(row)
        _fill(row, fields.STATUS, fields.STATUS_SUCCESS)
        if not isinstance(row.get(fields.BYTES), int):
            raise ValueError(f"sample {row.get(fields.KEY)!r}: {fields.BYTES} must be the image's size")
        prepared.append(row)
    prepared.sort(key=lambda row: row[fields.KEY])
    for a, b in zip(prepared, prepared[1:], strict=False):
        if a[fields.KEY] == b[fields.KEY]:
            raise ValueError(f"duplicate sample key {a[fields.KEY]!r} in one shard")
    return prepared


def _json_safe(row: Mapping) -> dict:
    # NaN and infinity are not JSON; a missing score reads better than a member other tools refuse to parse.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write_tar(out: _HashingFile, rows: list[dict], image_of: Callable[[str], bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            key, ext = row[fields.KEY], row[fields.IMAGE_FORMAT]
            image = image_of(key)
            if len(image) != row[fields.BYTES]:
                raise ValueError(f"sample {key!r}: {fields.BYTES} is {row[fields.BYTES]}, the image has {len(image)}")
            caption = (row.get(fields.CAPTION) or "").encode()
            meta = json.dumps(_json_safe(row), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
            for name, data in ((f"{key}.{ext}", image), (f"{key}.txt", caption), (f"{key}.json", meta)):
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def write_shard(dataset_dir: str | os.PathLike, index: int, samples: Iterable[tuple[Mapping, bytes]]) -> ShardEntry:
    """Write shard `index` (tar + Parquet, same rows in key order) atomically; rerunning it rewrites the same bytes.

    `samples` are (sample row with SAMPLE_SCHEMA fields, image bytes), held in memory: for a shard that does not fit,
    `write_shard_from` reads each image when the tar needs it.
    """
    rows, images = [], {}
    for row, image in samples:
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError(f"sample {row.get(fields.KEY)!r}: image must be bytes, got {type(image).__name__}")
        row = dict(row)
        _fill(row, fields.BYTES, len(image))
        rows.append(row)
        images.setdefault(row.get(fields.KEY), bytes(image))
    return write_shard_from(dataset_dir, index, rows, images.__getitem__)


def write_shard_from(
    dataset_dir: str | os.PathLike, index: int, rows: Iterable[Mapping], image_of: Callable[[str], bytes]
) -> ShardEntry:
    """Write shard `index` from sample rows (BYTES set) and `image_of(key)`, asked once per sample in key order.

    Independent of every other shard, so a Beam DoFn can call it per shard; it removes the dataset's manifest first,
    since the dataset is changing. Only the rows are held: the images stream from `image_of` into the tar.
    """
    root = os.fspath(dataset_dir)
    name = shard_name(index)
    table = conform(_prepare_rows(rows), SAMPLE_SCHEMA)
    # The .json members come from the Arrow rows, so they hold exactly what Parquet holds (float32 scores included).
    rows = table.to_pylist()
    fsio.mkdirs(fsio.join(root, SHARDS_DIR))
    _invalidate_manifest(root)
    tar_rel = f"{SHARDS_DIR}/{name}.tar"
    tar_entry = _write_atomic(fsio.join(root, tar_rel), tar_rel, lambda out: _write_tar(out, rows, image_of))
    parquet_entry = write_file_atomic(root, f"{SHARDS_DIR}/{name}.parquet", _parquet_bytes(table))
    return ShardEntry(name=name, rows=len(rows), tar=tar_entry, parquet=parquet_entry)


def renumber_shards(dataset_dir: str | os.PathLike, shards: Iterable[ShardEntry], start: int = 0) -> list[ShardEntry]:
    """Rename shards to consecutive numbers from `start`, in their current order (names, not bytes, change).

    Done before the manifest is written, so no reader sees the old names. Ascending order never overwrites a shard
    not yet moved: each new number is at most the old one.
    """
    root = os.fspath(dataset_dir)
    out = []
    for number, shard in enumerate(sorted(shards, key=lambda s: s.name), start):
        name = shard_name(number)
        if name == shard.name:
            out.append(shard)
            continue
        if int(name) > int(shard.name):
            raise ValueError(f"renumbering would move shard {shard.name} up to {name}; give a smaller start")
        entries = []
        for entry in (shard.tar, shard.parquet):
            rel = f"{SHARDS_DIR}/{name}{PurePosixPath(entry.path).suffix}"
            src, dst = fsio.join(root, entry.path), fsio.join(root, rel)
            moved = not fsio.exists(src) and fsio.is_file(dst)  # a retried finalize: already done
            if not moved:
                fsio.rename(src, dst)
            entries.append(FileEntry(path=rel, bytes=entry.bytes, sha256=entry.sha256))
        out.append(ShardEntry(name=name, rows=shard.rows, tar=entries[0], parquet=entries[1]))
    fsio.fsync_dir(fsio.join(root, SHARDS_DIR))
    return out


def carry_files(old_root: str | os.PathLike, new_root: str | os.PathLike, entries: Iterable[FileEntry]) -> None:
    """Put files of one dataset into another at the same relative paths (hard links where possible), after checking
    each is the size its manifest records. Rerunnable: a file already carried is linked again, which changes nothing.
    Either root may be remote (then the file is copied).
    """
    for entry in entries:
        src = fsio.join(old_root, entry.path)
        if fsio.size(src) != entry.bytes:
            raise ValueError(f"{src}: missing or not the size its manifest records; verify the dataset first")
        fsio.copy_file(src, fsio.join(new_root, entry.path))


def write_rejections(dataset_dir: str | os.PathLike, part: str, rows: Iterable[Mapping]) -> FileEntry:
    """Write `rejected/<part>.parquet` (REJECTION_SCHEMA) atomically, rows in a fixed order whatever their arrival."""
    validate_key(part)  # the part names a file, so it obeys the same safety rule as a key
    rows = [dict(row) for row in rows]
    for row in rows:
        _check_count(row.get(fields.STAGE), row.get(fields.REASON))
    rows.sort(key=lambda row: json.dumps(row, sort_keys=True, default=str))
    table = conform(rows, REJECTION_SCHEMA)
    root = os.fspath(dataset_dir)
    fsio.mkdirs(fsio.join(root, REJECTED_DIR))
    _invalidate_manifest(root)
    return write_file_atomic(root, f"{REJECTED_DIR}/{part}.parquet", _parquet_bytes(table))


def _check_count(stage: object, reason: object) -> None:
    if stage not in reasons.STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {list(reasons.STAGES)}")
    if reason != KEPT and not (isinstance(reason, str) and reasons.is_known(reason)):
        raise ValueError(f"unknown reason code {reason!r} (stage {stage}): add it to schemas/reasons.py")


def _funnel(counts: Mapping, kept: int) -> dict[str, dict[str, int]]:
    funnel: dict[str, dict[str, int]] = {}
    for stage, by_reason in counts.items():
        for reason, n in by_reason.items():
            _check_count(stage, reason)
            funnel.setdefault(stage, {})[reason] = int(n)
    funnel.setdefault(reasons.SHARDS, {})[KEPT] = kept  # what the shards hold, whatever a caller counted
    return funnel


def _check_written(root: str, entry: FileEntry) -> None:
    if fsio.size(fsio.join(root, entry.path)) != entry.bytes:
        raise ValueError(f"{entry.path}: missing or not the {entry.bytes} bytes written; was it overwritten?")


def finalize_dataset(
    dataset_dir: str | os.PathLike,
    shards: Iterable[ShardEntry],
    rejected: Iterable[FileEntry],
    counts: Mapping[str, Mapping[str, int]],
    config: Mapping,
) -> DatasetManifest:
    """Write sizes.json, then manifest.json last: from then on the dataset is exactly what the manifest lists.

    Entries may come in any order (Beam gives no order); they are sorted so the manifest is reproducible.
    """
    root = os.fspath(dataset_dir)
    shards = tuple(sorted(shards, key=lambda s: s.name))
    rejected = tuple(sorted(rejected, key=lambda f: f.path))
    names = [s.name for s in shards] + [f.path for f in rejected]
    if len(set(names)) != len(names):
        raise ValueError(f"a shard or rejection file is listed twice: {sorted(n for n in names if names.count(n) > 1)}")
    manifest = DatasetManifest(
        shards=shards,
        rejected=rejected,
        counts=_funnel(counts, kept=sum(s.rows for s in shards)),
        config=dict(config),
        code_version=code_version(),
    )
    for entry in manifest.files():
        _check_written(root, entry)
    text = manifest.to_json()  # before anything is written: a config that is not JSON fails here
    sizes = {PurePosixPath(s.tar.path).name: s.rows for s in shards}
    sizes_json = (json.dumps(sizes, indent=2, sort_keys=True) + "\n").encode()
    write_file_atomic(root, SIZES_NAME, sizes_json)
    if shards:  # open_clip looks for sizes.json beside the tars, not at the dataset root
        write_file_atomic(root, f"{SHARDS_DIR}/{SIZES_NAME}", sizes_json)
    write_file_atomic(root, MANIFEST_NAME, text.encode())
    return manifest


class DatasetWriter:
    """Single-process writer: samples fill shards in arrival order (key order inside each), rejections fill parts.

    A clean exit writes sizes.json and manifest.json. An exception leaves no manifest, so readers see no dataset;
    rerunning over the same directory replaces what was there. `reject(row)` counts its row's stage and reason;
    `count()` is for what the writer never sees (e.g. candidates an earlier stage kept).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        samples_per_shard: int = 10_000,
        config: Mapping | None = None,
        rejections_per_part: int = 100_000,
    ):
        if samples_per_shard < 1 or rejections_per_part < 1:
            raise ValueError("samples_per_shard and rejections_per_part must be at least 1")
        self.dataset_dir = Path(dataset_dir) if fsio.is_local(dataset_dir) else os.fspath(dataset_dir)
        self.samples_per_shard = samples_per_shard
        self.rejections_per_part = rejections_per_part
        self.config = dict(config or {})
        self.manifest: DatasetManifest | None = None
        self._samples: list[tuple[dict, bytes]] = []
        self._rejections: list[dict] = []
        self._shards: list[ShardEntry] = []
        self._rejected: list[FileEntry] = []
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def __enter__(self) -> "DatasetWriter":
        fsio.mkdirs(self.dataset_dir)
        _invalidate_manifest(os.fspath(self.dataset_dir))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def add(self, row: Mapping, image: bytes) -> None:
        """Add one kept sample (SAMPLE_SCHEMA row, image bytes)."""
        validate_key(row.get(fields.KEY))  # fail at the caller's line, not at a later flush
        image_ext(row)
        self._samples.append((dict(row), image))
        if len(self._samples) >= self.samples_per_shard:
            self._flush_samples()

    def reject(self, row: Mapping) -> None:
        """Record one rejected candidate (REJECTION_SCHEMA row) and count it under its stage and reason."""
        self.count(row.get(fields.STAGE), row.get(fields.REASON))
        self._rejections.append(dict(row))
        if len(self._rejections) >= self.rejections_per_part:
            self._flush_rejections()

    def count(self, stage: str, reason: str, n: int = 1) -> None:
        """Add `n` to the funnel count of (stage, reason code or "kept")."""
        _check_count(stage, reason)
        self._counts[stage][reason] += n

    def close(self) -> DatasetManifest:
        """Write what is buffered and finalize; idempotent."""
        if self.manifest is None:
            self._flush_samples()
            self._flush_rejections()
            self.manifest = finalize_dataset(self.dataset_dir, self._shards, self._rejected, self._counts, self.config)
        return self.manifest

    def _flush_samples(self) -> None:
        if self._samples:
            self._shards.append(write_shard(self.dataset_dir, len(self._shards), self._samples))
            self._samples = []

    def _flush_rejections(self) -> None:
        if self._rejections:
            part = shard_name(len(self._rejected))
            self._rejected.append(write_rejections(self.dataset_dir, part, self._rejections))
            self._rejections = []
