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

from PIL import Image

from pipeline import fsio
from pipeline.counters import Counters
from pipeline.fetch.image import image_signals, to_rgb
from pipeline.shard_reader import iter_shard, list_shards
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
# Made once per process: references are read inside a Beam step (image dedup's) and outside one (dedup_images_pure),
# and a counter that is not in a step counts nothing.
_COUNTERS = Counters("image_dedup")
UNDECODABLE_REFERENCE = "undecodable_reference_images"  # counter: earlier-dataset images that match on sha256 only


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
    with fsio.open_read(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            entry = blocklist_entry(line, f"{path}:{n}")
            if entry is not None:
                yield entry


def load_blocklist(path: str | os.PathLike) -> list[RefHash]:
    """Every entry of a blocklist file; ValueError naming the line for a malformed one."""
    return list(iter_blocklist(path))


def eval_image_paths(root: str | os.PathLike) -> list[str]:
    """Image files under `root` (local or any Beam FileSystems path), recursively, in a stable order: that of their
    relative paths compared folder by folder, as pathlib orders them."""
    paths = [p for p in fsio.walk_files(root) if os.path.splitext(fsio.basename(p))[1].lower() in EVAL_EXTS]
    return sorted(paths, key=lambda p: fsio.relative(p, root).split("/"))


def eval_images(root: str | os.PathLike) -> list[Path]:
    """Image files under a local `root`, recursively, in a stable order."""
    return [Path(p) for p in eval_image_paths(root)]


def _decoded(data: bytes) -> Image.Image:
    """The picture of encoded image bytes as the fetch stage sees it (RGB, orientation applied); raises whatever
    Pillow raises for bytes that are not an image."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)  # a new image (exif_transpose copies), still whole once the file is closed


def _signals(data: bytes) -> tuple[Image.Image, int, int]:
    """(RGB picture, phash, colour signature) of encoded image bytes, as the fetch stage computes them."""
    rgb = _decoded(data)
    ph, colour = image_signals(rgb)
    return rgb, ph, colour


def eval_image_hash(path: str | os.PathLike, root: str | os.PathLike) -> RefHash:
    """sha256 of the file, and phash, size and colour signature of the picture as the fetch stage computes them
    (RGB, orientation applied)."""
    data = fsio.read_bytes(path)
    try:
        rgb, ph, colour = _signals(data)
    except Exception as e:  # an eval image we cannot read would leave a hole in decontamination: say so
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    detail = fsio.relative(os.fspath(path), root)
    return RefHash(hashlib.sha256(data).hexdigest(), ph, detail, rgb.width, rgb.height, colour)


def eval_hashes(root: str | os.PathLike) -> list[RefHash]:
    """Hashes of every image of an evaluation folder (jpg, png, webp, recursively)."""
    return [eval_image_hash(p, root) for p in eval_image_paths(root)]


def dataset_parquets(path: str | os.PathLike) -> list[str]:
    """The shard Parquet files of a dataset, ours (as its manifest lists them) or img2dataset's."""
    return [p for p in (fsio.join(path, s.parquet.path) for s in list_shards(path)) if fsio.is_file(p)]


_REF_COLUMNS = (
    fields.KEY,
    fields.SHA256,
    fields.PHASH,
    fields.ORIGINAL_WIDTH,
    fields.ORIGINAL_HEIGHT,
    fields.COLOUR_SIG,
)


def image_signals_of_shard(tar: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{key: (phash, colour signature)} of the images a shard tar holds, computed as the fetch stage computes them.

    For a Parquet without usable phashes; the stored image is the resized one, whose phash lies a bit or two from
    the original's, well within near-duplicate distance. An image that does not decode is left out, and counted
    (image_dedup/undecodable_reference_images): its row still matches on sha256, so nothing is rejected for it."""
    out = {}
    for sample in iter_shard(tar):
        try:
            rgb = _decoded(sample.image)
        except Exception:  # Pillow raises many types on bytes that are not an image (OSError, SyntaxError, ...)
            _COUNTERS.inc(UNDECODABLE_REFERENCE)
            continue
        out[sample.key] = image_signals(rgb)  # only the decode is guarded: a fault of ours here must surface
    return out


def parquet_hashes(parquet: str | os.PathLike, label: str) -> Iterator[RefHash]:
    """sha256, phash and signals of each row of one shard Parquet, detail `label/key`.

    Rows without a phash we can compare (img2dataset's Parquet has none; one of ours from before phash was redefined,
    schema 1.0, has one computed another way; a writer may have left it null) get the phash and colour signature of
    their image when the shard's tar is beside the Parquet (same name, .tar); without it they match on sha256 only.
    """
    parquet = os.fspath(parquet)
    schema = fsio.parquet_schema(parquet)
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    columns = [c for c in _REF_COLUMNS if c in schema.names]
    if not phash_comparable(version.decode() if version else None):
        columns = [c for c in columns if c not in (fields.PHASH, fields.COLOUR_SIG)]
    table = fsio.read_parquet(parquet, columns=columns)
    n = table.num_rows
    cols = [table.column(c).to_pylist() if c in columns else [None] * n for c in _REF_COLUMNS]
    computed: dict[str, tuple[int, int]] = {}
    tar = parquet.removesuffix(".parquet") + ".tar"
    if None in cols[_REF_COLUMNS.index(fields.PHASH)] and fsio.is_file(tar):
        computed = image_signals_of_shard(tar)
    for key, sha, ph, width, height, colour in zip(*cols, strict=True):
        if ph is None and str(key) in computed:
            ph, colour = computed[str(key)]
        if sha is not None or ph is not None:
            yield RefHash(sha, ph, f"{label}/{key}", width, height, colour)


def dataset_hashes(path: str | os.PathLike) -> list[RefHash]:
    """Hashes of every sample of an earlier dataset."""
    label = fsio.basename(path)
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
        if not fsio.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file or directory ({self.reason} reference set)")
        if self.reason == reasons.BLOCKLISTED:
            deque(iter_blocklist(self.path), maxlen=0)  # every line checked now, none kept: a blocklist may be large
        elif self.reason == reasons.EVAL_CONTAMINATION and not eval_image_paths(self.path):
            raise ValueError(f"{self.path}: no {'/'.join(EVAL_EXTS)} images to decontaminate against")

    @property
    def rank(self) -> int:
        return PRECEDENCE.index(self.reason)

    def units(self) -> list[str]:
        """What one worker reads at a time: the blocklist, one eval image, or one shard's Parquet."""
        if self.reason == reasons.BLOCKLISTED:
            return [str(self.path)]
        if self.reason == reasons.EVAL_CONTAMINATION:
            return eval_image_paths(self.path)
        return dataset_parquets(self.path)

    def read(self, unit: str) -> Iterator[RefHash]:
        if self.reason == reasons.BLOCKLISTED:
            yield from iter_blocklist(unit)
        elif self.reason == reasons.EVAL_CONTAMINATION:
            yield eval_image_hash(unit, self.path)
        else:
            yield from parquet_hashes(unit, fsio.basename(self.path))

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
