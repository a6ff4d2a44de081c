"""Which shards a training run reads, and which (rank, DataLoader worker) slot reads which samples in each epoch.

Every rank computes the same plan from the same inputs (shard list, seed, epoch, world size, workers), so no
communication is needed and an epoch covers every sample exactly once across all slots. Slot s = rank * workers +
worker. Datasets are listed through fsspec, so local paths, file://, memory:// and (with their backends installed)
s3:// or gs:// URLs all work.
"""

import bisect
import heapq
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from schemas import DatasetManifest
from schemas.manifest import MANIFEST_NAME, SIZES_NAME

I2D_STATS_SUFFIX = "_stats.json"  # img2dataset writes NNNNN_stats.json beside NNNNN.tar


@dataclass(frozen=True)
class ShardInfo:
    """One tar: where it is (a local path or an fsspec URL), how many samples it holds if known, which dataset."""

    url: str
    rows: int | None = None
    source: int = 0  # index of its dataset in what list_shards was given: the unit of resampling weights


@dataclass(frozen=True)
class Piece:
    """What one slot reads of one shard: the samples whose index in the shard is `part` modulo `parts`."""

    shard: ShardInfo
    part: int = 0
    parts: int = 1

    @property
    def rows(self) -> int | None:
        rows = self.shard.rows
        return None if rows is None else max(0, (rows - self.part + self.parts - 1) // self.parts)


def make_rng(*parts: int) -> random.Random:
    """A generator seeded by a tuple of ints, the same in every process (str seeds hash with sha512, not hash())."""
    return random.Random(":".join(str(p) for p in parts))


def _join(root: str, rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"{MANIFEST_NAME} lists {rel!r}, which is outside the dataset")
    return f"{root.rstrip('/')}/{rel}"


def _manifest_shards(fs, root: str, text: bytes, url) -> list[ShardInfo]:
    manifest = DatasetManifest.from_json(text.decode("utf-8"), f"{root}/{MANIFEST_NAME}")
    return [ShardInfo(url(_join(root, s.tar.path)), s.rows) for s in manifest.shards]


def _img2dataset_shards(fs, root: str, url) -> list[ShardInfo]:
    """Tars of an img2dataset output folder; rows from sizes.json, else NNNNN_stats.json "successes", else unknown."""
    names = sorted(PurePosixPath(p).name for p in fs.ls(root, detail=False))
    # Hidden names are writers' temp files, never shards.
    tars = [n for n in names if n.endswith(".tar") and not n.startswith(".")]
    if not tars:
        raise FileNotFoundError(f"{root}: not a wit-builder dataset (no {MANIFEST_NAME}) nor img2dataset output")
    sizes: dict = {}
    if SIZES_NAME in names:
        sizes = json.loads(fs.cat_file(f"{root}/{SIZES_NAME}"))
    else:
        stats = [f"{root}/{t[:-4]}{I2D_STATS_SUFFIX}" for t in tars if f"{t[:-4]}{I2D_STATS_SUFFIX}" in names]
        for path, data in (fs.cat(stats, on_error="omit") if stats else {}).items():
            try:
                successes = json.loads(data).get("successes")
            except (ValueError, AttributeError):  # a damaged stats file only costs the row count
                continue
            if isinstance(successes, int):
                sizes[PurePosixPath(path).name[: -len(I2D_STATS_SUFFIX)] + ".tar"] = successes
    return [ShardInfo(url(f"{root}/{t}"), sizes.get(t)) for t in tars]


def _list_one(spec: str) -> list[ShardInfo]:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    if spec.endswith(".tar"):
        return [ShardInfo(spec, _tar_rows(spec))]
    fs, root = fsspec.core.url_to_fs(spec)
    root = root.rstrip("/") or "/"
    # Local shards are opened with plain open(): no fsspec layer in the hot loop.
    local = isinstance(fs, LocalFileSystem)

    def url(path: str) -> str:
        return path if local else fs.unstrip_protocol(path)

    try:
        text = fs.cat_file(f"{root}/{MANIFEST_NAME}")
    except FileNotFoundError:
        if not fs.isdir(root):
            raise FileNotFoundError(f"{spec}: no such dataset directory") from None
        return _img2dataset_shards(fs, root, url)
    return _manifest_shards(fs, root, text, url)


def _tar_rows(spec: str) -> int | None:
    """A single local tar's rows from the sizes.json of the dataset it sits in (img2dataset's: the tar's own folder;
    ours: DATASET/sizes.json for DATASET/shards/N.tar); None when there is none, it does not name the tar, or the tar
    is remote (a request per tar for a number the loader can do without)."""
    if "://" in spec and not spec.startswith("file://"):
        return None
    tar = PurePosixPath(spec.removeprefix("file://"))
    for folder in (tar.parent, *([tar.parent.parent] if tar.parent.name == "shards" else [])):
        try:
            with open(f"{folder}/{SIZES_NAME}", "rb") as f:
                sizes = json.loads(f.read())
        except (OSError, ValueError):  # no sizes.json there (FileNotFoundError is an OSError), or not JSON
            continue
        rows = sizes.get(tar.name) if isinstance(sizes, dict) else None
        if isinstance(rows, int) and not isinstance(rows, bool):
            return rows
    return None


def list_shards(datasets: str | Sequence[str]) -> list[ShardInfo]:
    """The shards of one or several datasets, in order, each tagged with its dataset's index (`source`).

    A dataset is our layout (only the shards its manifest.json lists, with their rows), an img2dataset output folder
    (its *.tar; rows from sizes.json or its *_stats.json, else unknown) or a single .tar URL (rows from its
    dataset's sizes.json, else unknown).
    """
    specs = [datasets] if isinstance(datasets, str) else list(datasets)
    out = []
    for source, spec in enumerate(specs):
        out += [ShardInfo(s.url, s.rows, source) for s in _list_one(str(spec))]
    if not out:
        raise ValueError(f"no shards in {specs}")
    return out


def shuffled(shards: Sequence[ShardInfo], seed: int, epoch: int) -> list[ShardInfo]:
    """The epoch's shard order: the same on every rank and worker, different each epoch."""
    out = list(shards)
    make_rng(seed, epoch).shuffle(out)
    return out


def _balance(pieces: Sequence[Piece], bins: int) -> list[list[Piece]]:
    """Greedy largest-first assignment of pieces to bins by rows (unknown rows weigh 1); each bin keeps input order.

    With equal rows this is round-robin. Largest-first keeps the biggest bin within one piece of the smallest.
    """
    weight = [1 if p.rows is None else p.rows for p in pieces]
    heap = [(0, b) for b in range(bins)]
    chosen: list[list[int]] = [[] for _ in range(bins)]
    for i in sorted(range(len(pieces)), key=lambda i: -weight[i]):  # stable: ties keep the epoch's order
        load, b = heapq.heappop(heap)
        chosen[b].append(i)
        heapq.heappush(heap, (load + weight[i], b))
    return [[pieces[i] for i in sorted(idx)] for idx in chosen]


def plan_epoch(shards: Sequence[ShardInfo], world_size: int, workers: int) -> list[list[Piece]]:
    """What each slot reads this epoch, in order: slot = rank * workers + worker; every sample in exactly one slot.

    Shards >= slots: whole shards, balanced by rows first across ranks, then across each rank's workers.
    Shards < slots (where splitting by whole shards would leave slots idle, or make them hang or duplicate): each
    shard is split into `parts` interleaved pieces, parts = slots / gcd(shards, slots) so that every slot gets the
    same number of pieces, and slots take consecutive pieces: each reads at most two shards.
    """
    slots = world_size * workers
    if len(shards) >= slots:
        by_rank = _balance([Piece(s) for s in shards], world_size)
        return [slot for rank_pieces in by_rank for slot in _balance(rank_pieces, workers)]
    parts = slots // math.gcd(len(shards), slots)
    pieces = [Piece(s, j, parts) for s in shards for j in range(parts)]
    each = len(pieces) // slots
    return [pieces[i * each : (i + 1) * each] for i in range(slots)]


def slot_rows(plan: Sequence[Sequence[Piece]]) -> list[int] | None:
    """Samples each slot will read, or None if some shard's row count is unknown."""
    rows = [[p.rows for p in pieces] for pieces in plan]
    if any(r is None for slot in rows for r in slot):
        return None
    return [sum(slot) for slot in rows]


def equal_batches(rows: Sequence[int], world_size: int, batch_size: int) -> list[int]:
    """Full batches each slot may yield so that every rank yields the same number: the smallest rank's count.

    A rank over that count gives up batches from its fullest workers first (water-filling), so its workers stay
    as even as they can.
    """
    workers = len(rows) // world_size
    full = [n // batch_size for n in rows]
    per_rank = [full[r * workers : (r + 1) * workers] for r in range(world_size)]
    target = min(sum(r) for r in per_rank)
    limits: list[int] = []
    for rank in per_rank:
        # Smallest level L with sum(min(n, L)) >= target, then trim the surplus from slots at that level.
        level = bisect.bisect_left(range(max(rank) + 1), target, key=lambda lv: sum(min(n, lv) for n in rank))
        capped = [min(n, level) for n in rank]
        surplus = sum(capped) - target
        for i, n in enumerate(capped):
            if surplus and n == level:
                capped[i] -= 1
                surplus -= 1
        limits += capped
    return limits


def resampled_pieces(
    shards: Sequence[ShardInfo], rng: random.Random, weights: Sequence[float] | None = None
) -> Iterator[Piece]:
    """An endless stream of whole shards drawn with replacement.

    Without weights a shard's chance is proportional to its rows (unknown rows count as the mean known), which is
    drawing samples uniformly. With `weights` (one per dataset, i.e. per `source`) each dataset gets that share of
    the draws, and its shards split it by rows.
    """
    known = [s.rows for s in shards if s.rows is not None]
    mean = sum(known) / len(known) if known else 1.0
    size = [float(mean if s.rows is None else s.rows) for s in shards]
    if weights is not None:
        totals: dict[int, float] = {}
        for s, n in zip(shards, size, strict=True):
            totals[s.source] = totals.get(s.source, 0.0) + n
        size = [
            weights[s.source] * n / totals[s.source] if totals[s.source] else 0.0
            for s, n in zip(shards, size, strict=True)
        ]
    cum = list(itertools.accumulate(size))
    if not shards or cum[-1] <= 0:
        raise ValueError("resampling needs at least one shard with a positive weight")
    while True:
        yield Piece(shards[bisect.bisect_right(cum, rng.random() * cum[-1])])
