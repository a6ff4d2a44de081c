"""Reference sets for image dedup: hashes a sample must not match (blocklist, eval images, earlier datasets)."""

import hashlib
import io
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq
from PIL import Image

from pipeline.fetch.image import image_signals, to_rgb
from pipeline.shard_reader import list_shards
from schemas import fields, reasons
from schemas.records import SCHEMA_VERSION_KEY
from schemas.version import phash_comparable

# Which outcome wins when several apply to one sample: the first listed. Reference matches come first, so a sample
# that matches one is removed before deduplication and never survives a group.
PRECEDENCE = (
    reasons.BLOCKLISTED,
    reasons.EVAL_CONTAMINATION,
    reasons.SEEN_BEFORE,
    reasons.DUPLICATE_IMAGE,
    reasons.NEAR_DUPLICATE_IMAGE,
)
REFERENCE_REASONS = PRECEDENCE[:3]
EVAL_EXTS = (".jpg", ".jpeg", ".png", ".webp")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PHASH = re.compile(r"^[0-9a-f]{16}$")


class RefHash(NamedTuple):
    """One reference: the sha256 of its bytes and/or its 64-bit phash, what a match reports as detail, and the
    signals that can veto a phash match (original size, colour signature) where known: a blocklist has none."""

    sha256: str | None
    phash: int | None
    detail: str
    width: int | None = None
    height: int | None = None
    colour: int | None = None


def blocklist_entry(line: str, where: str) -> RefHash | None:
    """A blocklist line: a 64-hex sha256 or a 16-hex phash, `#` starting a comment; None for blank lines."""
    text = line.split("#", 1)[0].strip().lower()
    if not text:
        return None
    if _SHA256.match(text):
        return RefHash(text, None, f"sha256:{text}")
    if _PHASH.match(text):
        return RefHash(None, int(text, 16), f"phash:{text}")
    raise ValueError(f"{where}: expected a 64-hex sha256 or a 16-hex phash, got {text[:80]!r}")


def iter_blocklist(path: str | os.PathLike) -> Iterator[RefHash]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            entry = blocklist_entry(line, f"{path}:{n}")
            if entry is not None:
                yield entry


def load_blocklist(path: str | os.PathLike) -> list[RefHash]:
    """Every entry of a blocklist file; ValueError naming the line for a malformed one."""
    return list(iter_blocklist(path))


def eval_images(root: str | os.PathLike) -> list[Path]:
    """Image files under `root`, recursively, in a stable order."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in EVAL_EXTS and p.is_file())


def eval_image_hash(path: str | os.PathLike, root: str | os.PathLike) -> RefHash:
    """sha256 of the file, and phash, size and colour signature of the picture as the fetch stage computes them
    (RGB, orientation applied)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = to_rgb(img)
            ph, colour = image_signals(rgb)
    except Exception as e:  # an eval image we cannot read would leave a hole in decontamination: say so
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    detail = path.relative_to(root).as_posix()
    return RefHash(hashlib.sha256(data).hexdigest(), ph, detail, rgb.width, rgb.height, colour)


def eval_hashes(root: str | os.PathLike) -> list[RefHash]:
    """Hashes of every image of an evaluation folder (jpg, png, webp, recursively)."""
    return [eval_image_hash(p, root) for p in eval_images(root)]


def dataset_parquets(path: str | os.PathLike) -> list[Path]:
    """The shard Parquet files of a dataset, ours (as its manifest lists them) or img2dataset's."""
    root = Path(path)
    return [root / s.parquet.path for s in list_shards(root) if (root / s.parquet.path).is_file()]


_REF_COLUMNS = (
    fields.KEY,
    fields.SHA256,
    fields.PHASH,
    fields.ORIGINAL_WIDTH,
    fields.ORIGINAL_HEIGHT,
    fields.COLOUR_SIG,
)


def parquet_hashes(parquet: str | os.PathLike, label: str) -> Iterator[RefHash]:
    """sha256, phash and signals of each row of one shard Parquet, detail `label/key`. img2dataset's has no phash,
    and one of ours from before phash was redefined (schema 1.0) has one we cannot compare: both match on sha256."""
    schema = pq.read_schema(parquet)
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    columns = [c for c in _REF_COLUMNS if c in schema.names]
    if not phash_comparable(version.decode() if version else None):
        columns = [c for c in columns if c not in (fields.PHASH, fields.COLOUR_SIG)]
    table = pq.read_table(parquet, columns=columns)
    n = table.num_rows
    cols = [table.column(c).to_pylist() if c in columns else [None] * n for c in _REF_COLUMNS]
    for key, sha, ph, width, height, colour in zip(*cols, strict=True):
        if sha is not None or ph is not None:
            yield RefHash(sha, ph, f"{label}/{key}", width, height, colour)


def dataset_hashes(path: str | os.PathLike) -> list[RefHash]:
    """Hashes of every sample of an earlier dataset."""
    label = Path(path).name
    return [h for parquet in dataset_parquets(path) for h in parquet_hashes(parquet, label)]


@dataclass(frozen=True)
class ReferenceSet:
    """Hashes whose near-copies are rejected with `reason`: BLOCKLISTED reads a blocklist file, EVAL_CONTAMINATION
    a folder of images, SEEN_BEFORE an earlier dataset. Checked when made: a bad blocklist line fails here."""

    reason: str
    path: str

    def __post_init__(self) -> None:
        if self.reason not in REFERENCE_REASONS:
            raise ValueError(f"a reference set's reason must be one of {REFERENCE_REASONS}, got {self.reason!r}")
        if not Path(self.path).exists():
            raise FileNotFoundError(f"{self.path}: no such file or directory ({self.reason} reference set)")
        if self.reason == reasons.BLOCKLISTED:
            deque(iter_blocklist(self.path), maxlen=0)  # every line checked now, none kept: a blocklist may be large
        elif self.reason == reasons.EVAL_CONTAMINATION and not eval_images(self.path):
            raise ValueError(f"{self.path}: no {'/'.join(EVAL_EXTS)} images to decontaminate against")

    @property
    def rank(self) -> int:
        return PRECEDENCE.index(self.reason)

    def units(self) -> list[str]:
        """What one worker reads at a time: the blocklist, one eval image, or one shard's Parquet."""
        if self.reason == reasons.BLOCKLISTED:
            return [str(self.path)]
        if self.reason == reasons.EVAL_CONTAMINATION:
            return [str(p) for p in eval_images(self.path)]
        return [str(p) for p in dataset_parquets(self.path)]

    def read(self, unit: str) -> Iterator[RefHash]:
        if self.reason == reasons.BLOCKLISTED:
            yield from iter_blocklist(unit)
        elif self.reason == reasons.EVAL_CONTAMINATION:
            yield eval_image_hash(unit, self.path)
        else:
            yield from parquet_hashes(unit, Path(self.path).name)

    def hashes(self) -> Iterator[RefHash]:
        for unit in self.units():
            yield from self.read(unit)


def reference_sets(
    exclude_from: Sequence[str] = (), decontaminate: Sequence[str] = (), blocklist: Sequence[str] = ()
) -> tuple[ReferenceSet, ...]:
    """The reference sets of `--exclude-from DATASET...`, `--decontaminate EVAL_DIR` and `--blocklist FILE`."""
    return (
        *(ReferenceSet(reasons.BLOCKLISTED, p) for p in blocklist),
        *(ReferenceSet(reasons.EVAL_CONTAMINATION, p) for p in decontaminate),
        *(ReferenceSet(reasons.SEEN_BEFORE, p) for p in exclude_from),
    )
