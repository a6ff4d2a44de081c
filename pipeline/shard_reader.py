"""Shard reader and verifier: streams samples from our datasets and img2dataset output, refusing unsafe members."""

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

import pyarrow as pa

from pipeline import fsio
from schemas import (
    SAMPLE_SCHEMA,
    DatasetManifest,
    FileEntry,
    ShardEntry,
    check_schema_version,
    empty_row,
    fields,
    keys,
    reasons,
)
from schemas.manifest import MANIFEST_NAME, SHARDS_DIR, SIZES_NAME
from schemas.records import SCHEMA_VERSION_KEY

log = logging.getLogger(__name__)

# Why a reader skipped something: the `reason` of ReadReport.errors.
UNSAFE_MEMBER = keys.UNSAFE_MEMBER  # not a regular file, a name that could escape the shard, or oversized
INVALID_KEY = reasons.INVALID_KEY  # member stem is not a valid key
CORRUPT_SHARD = "corrupt_shard"  # unreadable from some point on; the rest of the shard is skipped
MISSING_FILE = "missing_file"  # a shard or its Parquet listed in the manifest is not there
BAD_METADATA = "bad_metadata"  # unreadable Parquet or .json member
MISSING_IMAGE = "missing_image"  # a sample without an image member
MISSING_ROW = "missing_row"  # a sample in the tar with no row in the Parquet
MISSING_SAMPLES = "missing_samples"  # rows in the Parquet with no sample in the tar
DUPLICATE_KEY = "duplicate_key"  # a key met twice in one shard

# Image members we yield, in order of preference; "jpeg" because other WebDataset writers use it.
IMAGE_EXTS = (*fields.IMAGE_FORMATS, "jpeg")
# A member larger than this is refused, not read into memory: no real image is near it, a crafted tar can be.
MAX_MEMBER_BYTES = keys.MAX_MEMBER_BYTES
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One image-text pair as read: the image member's bytes and extension, the caption, and its sample row."""

    key: str
    image: bytes = field(repr=False)
    image_ext: str
    caption: str
    row: dict = field(repr=False)  # SAMPLE_SCHEMA field names


@dataclass
class ReadReport:
    """What a read skipped and why: (shard file name, reason, detail) per problem, plus the samples yielded."""

    samples: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)

    def error(self, shard: str, reason: str, detail: str) -> None:
        self.errors.append((shard, reason, detail))
        log.warning("%s: %s: %s", shard, reason, detail)


def _inside(root: str, rel: str) -> str:
    """`root/rel`, refusing a manifest path that is absolute or climbs out of the dataset."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"{MANIFEST_NAME} lists {rel!r}, which is outside the dataset")
    return fsio.join(root, *parts)


def load_manifest(path: str | os.PathLike) -> DatasetManifest:
    """The dataset's manifest (local or any Beam FileSystems path); FileNotFoundError without one, ValueError
    (SchemaVersionError) for a bad one."""
    root = os.fspath(path)
    where = fsio.join(root, MANIFEST_NAME)
    try:
        text = fsio.read_text(where)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{root}: not a wit-builder dataset (no {MANIFEST_NAME})") from None
    try:
        manifest = DatasetManifest.from_json(text, str(where))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
    for entry in manifest.files():
        _inside(root, entry.path)
    return manifest


def _img2dataset_tars(root: str) -> list[str]:
    # Hidden names are writers' temp files, never shards.
    return [p for p in fsio.list_files(root, "*.tar") if not fsio.basename(p).startswith(".")]


def _check_dataset_dir(root: str) -> bool:
    """True for our layout, False for img2dataset's; an error for anything else."""
    if fsio.is_file(fsio.join(root, MANIFEST_NAME)):
        return True
    if not fsio.is_dir(root):
        raise FileNotFoundError(f"{root}: no such dataset directory")
    if _img2dataset_tars(root):
        return False
    unfinished = (
        f"; {SHARDS_DIR}/ is there, so its build did not finish" if fsio.is_dir(fsio.join(root, SHARDS_DIR)) else ""
    )
    raise FileNotFoundError(
        f"{root}: not a wit-builder dataset (no {MANIFEST_NAME}{unfinished}) nor img2dataset output (no *.tar)"
    )


def _to_sample_row(src: dict) -> dict:
    """Map a foreign (img2dataset) row onto SAMPLE_SCHEMA names.

    key, url, caption, status, width, height, original_width, original_height and sha256 (of the original bytes
    in both) share our names; error_message (free text, null on success) and exif have no field and are dropped.
    """
    row = empty_row(SAMPLE_SCHEMA)
    for name, value in src.items():
        if name in row:
            row[name] = value
    if row[fields.KEY] is not None:
        row[fields.KEY] = str(row[fields.KEY])
    return row


def _read_rows(parquet_path: str, label: str, report: ReadReport) -> dict[str, dict] | None:
    """Rows by key from a shard's Parquet: ours as written, img2dataset's success rows mapped onto our names."""
    try:
        table = fsio.read_parquet(parquet_path)
    except (OSError, pa.ArrowException) as e:
        name = fsio.basename(parquet_path)
        report.error(label, BAD_METADATA, f"{name}: {e}; reading the tar's .json members instead")
        return None
    version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is not None:
        check_schema_version(version.decode(), str(parquet_path))
        return {row[fields.KEY]: row for row in table.to_pylist()}
    # img2dataset keeps failed downloads in its Parquet; only success rows have a sample in the tar.
    mapped = (_to_sample_row(row) for row in table.to_pylist())
    return {row[fields.KEY]: row for row in mapped if row[fields.STATUS] in (None, fields.STATUS_SUCCESS)}


def _member_problem(member: tarfile.TarInfo) -> tuple[str, str] | None:
    return keys.member_problem(member.name, member.isreg(), member.type, member.size, MAX_MEMBER_BYTES)


def _junk_after(f: BinaryIO, offset: int) -> bool:
    """True if anything but zero padding follows `offset`.

    tarfile takes an unreadable header after the first as the end of the archive; this tells corruption from
    the real end without reading more than the first nonzero chunk.
    """
    f.seek(offset)
    while chunk := f.read(_CHUNK):
        if chunk.strip(b"\0"):
            return True
    return False


def _member_groups(path: str, label: str, report: ReadReport) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for each run of consecutive members sharing a key, as WebDataset groups them.

    Streams the tar. On corruption reading stops; the members read whole before it still form their group.
    """
    key, parts = None, {}
    try:
        with fsio.open_read(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                problem = _member_problem(member)
                if problem:
                    report.error(label, *problem)
                    continue
                stem, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                if stem != key:
                    if key is not None:
                        yield key, parts
                    key, parts = stem, {}
                parts[ext] = data
            if _junk_after(f, tar.offset):
                raise tarfile.ReadError(f"unreadable tar header at byte {tar.offset}")
    except (tarfile.TarError, EOFError, OSError) as e:
        report.error(label, CORRUPT_SHARD, f"{e}; the rest of the shard is skipped")
    if key is not None:
        yield key, parts


def _json_row(data: bytes | None, key: str, label: str, report: ReadReport) -> dict:
    if data is None:
        return empty_row(SAMPLE_SCHEMA)
    try:
        src = json.loads(data)
        if not isinstance(src, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        report.error(label, BAD_METADATA, f"{key}.json: {e}")
        return empty_row(SAMPLE_SCHEMA)
    return _to_sample_row(src)


def _to_sample(key: str, parts: dict[str, bytes], rows: dict | None, label: str, report: ReadReport) -> Sample | None:
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        report.error(label, MISSING_IMAGE, f"{key}: no image member among {sorted(parts)}")
        return None
    if rows is None:
        row = _json_row(parts.get("json"), key, label, report)
    elif key in rows:
        row = dict(rows[key])
    else:
        report.error(label, MISSING_ROW, f"{key}: in the tar but not in the Parquet")
        return None
    image = parts[ext]
    caption = parts["txt"].decode("utf-8", "replace") if "txt" in parts else (row.get(fields.CAPTION) or "")
    # Fill what a foreign row leaves out from what the tar says.
    defaults = {
        fields.KEY: key,
        fields.CAPTION: caption,
        fields.STATUS: fields.STATUS_SUCCESS,
        fields.IMAGE_FORMAT: "jpg" if ext == "jpeg" else ext,
        fields.BYTES: len(image),
    }
    for name, value in defaults.items():
        if row.get(name) is None:
            row[name] = value
    return Sample(key=key, image=image, image_ext=ext, caption=caption, row=row)


def iter_shard(
    tar_path: str | os.PathLike, parquet_path: str | os.PathLike | None = None, report: ReadReport | None = None
) -> Iterator[Sample]:
    """Samples of one shard in tar order, rows from its Parquet (ours or img2dataset's) or else its .json members.

    Never raises for a bad shard: unsafe members, corruption and mismatches are counted in `report` and skipped.
    A Parquet written under another schema major version is refused (SchemaVersionError).
    """
    tar_path = os.fspath(tar_path)
    label = fsio.basename(tar_path)
    report = report if report is not None else ReadReport()
    rows = _read_rows(os.fspath(parquet_path), label, report) if parquet_path is not None else None
    if not fsio.is_file(tar_path):
        report.error(label, MISSING_FILE, f"{tar_path}: no such file")
        return
    seen: set[str] = set()
    for key, parts in _member_groups(tar_path, label, report):
        if key in seen:
            report.error(label, DUPLICATE_KEY, f"{key}: met again after other keys")
            continue
        seen.add(key)
        sample = _to_sample(key, parts, rows, label, report)
        if sample is not None:
            report.samples += 1
            yield sample
    missing = [k for k in rows or {} if k not in seen]
    if missing:
        report.error(
            label, MISSING_SAMPLES, f"{len(missing)} Parquet rows have no sample in the tar, e.g. {missing[0]}"
        )


def _sibling(tar: str, suffix: str) -> str:
    """The file beside an img2dataset tar with the same stem: `00000.parquet`, `00000_stats.json`."""
    return tar.removesuffix(".tar") + suffix


def _shard_files(root: str, report: ReadReport) -> Iterator[tuple[str, str | None]]:
    if not _check_dataset_dir(root):
        for tar in _img2dataset_tars(root):
            parquet = _sibling(tar, ".parquet")
            yield tar, parquet if fsio.is_file(parquet) else None
        return
    for shard in load_manifest(root).shards:
        tar, parquet = _inside(root, shard.tar.path), _inside(root, shard.parquet.path)
        label = fsio.basename(tar)
        if not fsio.is_file(tar):
            report.error(label, MISSING_FILE, f"{shard.tar.path} is listed in {MANIFEST_NAME} but missing")
            continue
        has_parquet = fsio.is_file(parquet)
        if not has_parquet:
            report.error(label, MISSING_FILE, f"{shard.parquet.path} is missing; reading the .json members")
        yield tar, parquet if has_parquet else None


def read_dataset(path: str | os.PathLike, report: ReadReport | None = None) -> Iterator[Sample]:
    """Every sample of a dataset: ours (only what manifest.json lists) or an img2dataset output folder."""
    report = report if report is not None else ReadReport()
    for tar, parquet in _shard_files(os.fspath(path), report):
        yield from iter_shard(tar, parquet, report)


def _success_rows(tar: str) -> int:
    parquet = _sibling(tar, ".parquet")
    if fsio.is_file(parquet):
        status = fsio.read_parquet(parquet, columns=[fields.STATUS]).column(fields.STATUS).to_pylist()
        return sum(s == fields.STATUS_SUCCESS for s in status)
    stats = _sibling(tar, "_stats.json")
    return int(json.loads(fsio.read_text(stats)).get("successes", 0)) if fsio.is_file(stats) else 0


def list_shards(path: str | os.PathLike) -> list[ShardEntry]:
    """The shards of a dataset. For img2dataset output, rows are its success rows and sha256 is "" (not recorded)."""
    root = os.fspath(path)
    if _check_dataset_dir(root):
        return list(load_manifest(root).shards)
    entries = []
    for tar in _img2dataset_tars(root):
        parquet = _sibling(tar, ".parquet")
        name = fsio.basename(tar)
        entries.append(
            ShardEntry(
                name=name.removesuffix(".tar"),
                rows=_success_rows(tar),
                tar=FileEntry(path=name, bytes=fsio.size(tar), sha256=""),
                parquet=FileEntry(path=fsio.basename(parquet), bytes=fsio.size(parquet) or 0, sha256=""),
            )
        )
    return entries


def _verify_file(root: str, entry: FileEntry) -> list[str]:
    path = _inside(root, entry.path)
    size = fsio.size(path)
    if size is None:
        return [f"{entry.path}: missing"]
    if size != entry.bytes:
        return [f"{entry.path}: {size} bytes, manifest says {entry.bytes} (truncated or replaced)"]
    with fsio.open_read(path) as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry.sha256:
        return [f"{entry.path}: sha256 {digest[:16]}..., manifest says {entry.sha256[:16]}... (contents changed)"]
    return []


def _verify_rows(root: str, shard: ShardEntry) -> list[str]:
    path = _inside(root, shard.parquet.path)
    if not fsio.is_file(path):
        return []  # already reported as missing
    try:
        rows = fsio.parquet_rows(path)
    except (OSError, pa.ArrowException) as e:
        return [f"{shard.parquet.path}: unreadable Parquet footer ({e})"]
    return [] if rows == shard.rows else [f"{shard.parquet.path}: {rows} rows, manifest says {shard.rows}"]


def _verify_sizes(root: str, manifest: DatasetManifest) -> list[str]:
    expected = {PurePosixPath(s.tar.path).name: s.rows for s in manifest.shards}
    try:
        sizes = json.loads(fsio.read_text(fsio.join(root, SIZES_NAME)))
    except FileNotFoundError:
        return [f"{SIZES_NAME}: missing"]
    except ValueError as e:
        return [f"{SIZES_NAME}: not valid JSON ({e})"]
    if not isinstance(sizes, dict):
        return [f"{SIZES_NAME}: not a JSON object"]
    problems = []
    for name in sorted(expected.keys() | sizes.keys()):
        if name not in sizes:
            problems.append(f"{SIZES_NAME}: lacks {name}, which the manifest lists with {expected[name]} rows")
        elif name not in expected:
            problems.append(f"{SIZES_NAME}: lists {name}, which the manifest does not")
        elif sizes[name] != expected[name]:
            problems.append(f"{SIZES_NAME}: {name} has {sizes[name]} rows, manifest says {expected[name]}")
    return problems


def verify_dataset(path: str | os.PathLike, progress: Callable[[FileEntry], None] | None = None) -> list[str]:
    """Check every file the manifest lists (presence, size, sha256), Parquet row counts and sizes.json.

    Returns one line per problem; empty means the dataset is exactly what its manifest says. `progress` is
    called after each file is checked.
    """
    root = os.fspath(path)
    manifest = load_manifest(root)
    problems: list[str] = []
    for entry in manifest.files():
        problems += _verify_file(root, entry)
        if progress is not None:
            progress(entry)
    for shard in manifest.shards:
        problems += _verify_rows(root, shard)
    return problems + _verify_sizes(root, manifest)
