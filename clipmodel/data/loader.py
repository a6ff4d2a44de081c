"""The training data loader: curated shards (ours or img2dataset's) to batches of CLIP-ready images and tokens.

    loader = make_loader(["data/wit-v1"], batch_size=256, resolution=224, workers=8, seed=0,
                         rank=dist.get_rank(), world_size=dist.get_world_size())
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:                      # Batch(images (B,3,R,R), tokens (B,77), keys, worker, position)
            ...; checkpoint["loader"] = loader.state_dict()

Design, and the guarantees it gives:
- Splitting: every rank computes the same per-epoch plan (shardlist.plan_epoch) over slots = ranks x workers; whole
  shards when there are enough, interleaved parts of shards when there are fewer, so an epoch reads every sample
  exactly once with no idle, hanging or duplicating slot.
- Equal ranks: the contrastive loss all-gathers equal batches, so with `equalize` (default when training on several
  ranks, not resampled) every rank yields the same number of full batches per epoch: the smallest rank's count, the
  tail beyond it dropped on all ranks. A worker whose shards come up short (corrupt samples) re-reads its pieces
  rather than leave its rank short and the others hanging in all_gather (counted as "repeated"). Evaluation reads
  every sample once, partial batches included, so ranks may differ by a batch there.
- Shuffling: shard order from (seed, epoch); a sample buffer seeded by (seed, epoch, slot); random crops drawn per
  sample position. `resampled`: shards drawn with replacement (weights per dataset), an endless stream.
- Resume: state_dict() holds the epoch and, per worker, the position of the last batch the trainer consumed. A
  resumed loader with the same datasets, config, world size and workers yields exactly the batches the interrupted
  run would have yielded next (same samples, crops and order, workers' interleaving included while no worker has
  run dry): each worker replays its deterministic epoch stream, reading and shuffling raw bytes without decoding, up
  to its position. Prefetched batches the trainer never consumed are made again.
- Batching happens in the workers (DataLoader batch_size=None): one uint8 buffer per batch normalized in one pass
  straight into shared memory, one tokenizer call per batch, one message per batch to the main process.
- Errors: a corrupt image, a missing member, bad JSON, a truncated or unreadable shard and an unsafe member are
  skipped and counted per worker in shared memory (`loader.counters()`), never raised, never waited on.
"""

import functools
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipmodel import transform
from clipmodel.data import stages
from clipmodel.data.shardlist import (
    ShardInfo,
    equal_batches,
    list_shards,
    make_rng,
    plan_epoch,
    resampled_pieces,
    shuffled,
    slot_rows,
)
from clipmodel.data.stages import Batch, Tokenize
from clipmodel.data.tarstream import REPEATED, Counters
from clipmodel.train.config import AUGMENTATIONS

CONTEXT_LENGTH = 77
# Stream ids under one (seed, epoch, slot): independent generators for each use.
_SHARDS_RNG, _BUFFER_RNG, _CROP_RNG = 0, 1, 2


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides what a loader yields, stored in checkpoints; rank and world size are not in it."""

    datasets: tuple[str, ...]
    batch_size: int
    resolution: int = 224
    train: bool = True  # shuffle and random-crop; else file order and centre crop
    workers: int = 2  # DataLoader workers per rank; 0 reads in the main process
    seed: int = 0
    resampled: bool = False  # shards drawn with replacement, endless; the trainer counts steps
    weights: tuple[float, ...] | None = None  # resampled: share of draws per dataset (default: by rows)
    shuffle_buffer: int = 2000  # samples held per worker to shuffle across shards; 0 or 1: off
    equalize: bool | None = None  # same batches per rank each epoch; None: when training on several ranks, unresampled
    drop_last: bool | None = None  # drop each worker's last partial batch; None: when training
    prefetch_factor: int = 4  # batches each worker prepares ahead
    context_length: int = CONTEXT_LENGTH
    augment: tuple[str, ...] = ()  # training only: transform.AUGMENTATIONS applied at random after the crop

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "datasets", (self.datasets,) if isinstance(self.datasets, str) else tuple(self.datasets)
        )
        object.__setattr__(self, "augment", tuple(self.augment))
        if unknown := set(self.augment) - set(AUGMENTATIONS):
            raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.datasets:
            raise ValueError("DataConfig needs at least one dataset")
        for name in ("batch_size", "resolution", "prefetch_factor", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("workers and shuffle_buffer must be >= 0")
        if self.weights is not None and (len(self.weights) != len(self.datasets) or min(self.weights) < 0):
            raise ValueError(f"weights must be {len(self.datasets)} non-negative numbers, one per dataset")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(**d)


def default_tokenize(texts: list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP's BPE (clipmodel/tokenizer.py), imported on first use in each worker."""
    from clipmodel.tokenizer import tokenize

    return tokenize(texts, context_length)


class _SharedState:
    """Epoch, worker rotation, resume point per worker and counters per worker, in memory the workers share.

    Persistent workers keep the dataset object they started with, so what changes between epochs (epoch, resume
    point) must reach them through shared memory. Each worker writes only its own counters row.
    """

    _HEAD = 2  # epoch, rotation

    def __init__(self, workers: int):
        self.workers = workers
        self.width = len(Counters.FIELDS)
        self.raw = multiprocessing.RawArray("q", self._HEAD + 2 * workers + workers * self.width)

    def __getstate__(self) -> dict:
        return {"workers": self.workers, "width": self.width, "raw": self.raw}

    @functools.cached_property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.raw, dtype=np.int64)

    def begin(self, epoch: int, positions: Sequence[int], done: Sequence[int], rotation: int = 0) -> None:
        """Set what the next iteration starts from: each worker role skips `positions` samples, `done` batches."""
        w, head = self.workers, self._HEAD
        self.array[:head] = (epoch, rotation)
        self.array[head : head + w] = positions
        self.array[head + w : head + 2 * w] = done

    def read(self, role: int) -> tuple[int, int, int, int]:
        """(epoch, rotation, resume position, batches already delivered) for a worker role."""
        a, head = self.array, self._HEAD
        return int(a[0]), int(a[1]), int(a[head + role]), int(a[head + self.workers + role])

    def counters(self, role: int) -> Counters:
        start = self._HEAD + 2 * self.workers + role * self.width
        return Counters(self.array[start : start + self.width])


class ShardDataset(IterableDataset):
    """Batches for one rank; each DataLoader worker (or the main process, with workers=0) reads its slot's share."""

    def __init__(
        self,
        config: DataConfig,
        *,
        tokenize: Tokenize | None = None,
        rank: int = 0,
        world_size: int = 1,
        shards: Sequence[ShardInfo] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.shards = list(shards) if shards is not None else list_shards(config.datasets)
        self.tokenize = tokenize or functools.partial(default_tokenize, context_length=config.context_length)
        self.roles = max(config.workers, 1)
        auto = world_size > 1 and config.train and not config.resampled  # evaluation wants every sample
        self.equalized = config.equalize if config.equalize is not None else auto
        self.drop_last = config.drop_last if config.drop_last is not None else config.train or self.equalized
        if self.equalized and (config.resampled or not self.drop_last):
            raise ValueError("equalize needs drop_last and is meaningless with resampled (an endless stream)")
        if self.equalized and any(s.rows is None for s in self.shards):
            raise ValueError("equalize needs every shard's row count: give sizes.json (or *_stats.json) or resample")
        self.shared = _SharedState(self.roles)
        self.epoch = 0

    def plan(self, epoch: int) -> tuple[list[list], list[int] | None]:
        """(pieces per slot, batches per slot or None), the same on every rank for an epoch."""
        order = shuffled(self.shards, self.config.seed, epoch) if self.config.train else self.shards
        plan = plan_epoch(order, self.world_size, self.roles)
        rows = slot_rows(plan)
        limits = equal_batches(rows, self.world_size, self.config.batch_size) if self.equalized else None
        return plan, limits

    def __len__(self) -> int:
        """Batches this rank yields per epoch: exact when equalized; otherwise an upper bound (bad samples lower it)."""
        if self.config.resampled:
            raise TypeError("a resampled loader is endless: the trainer counts steps")
        plan, limits = self.plan(self.epoch)
        rows = slot_rows(plan)
        if rows is None:
            raise TypeError("length unknown: some shard's row count is unknown")
        mine = range(self.rank * self.roles, (self.rank + 1) * self.roles)
        if limits is not None:
            return sum(limits[s] for s in mine)
        b = self.config.batch_size
        return sum(rows[s] // b if self.drop_last else math.ceil(rows[s] / b) for s in mine)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iteration (ShardLoader.set_epoch also keeps resume state)."""
        self.epoch = epoch
        self.shared.begin(epoch, [0] * self.roles, [0] * self.roles)

    def _role(self) -> tuple[int, int]:
        """(worker role, rotation): the role is the worker id, rotated on resume so the interleaving continues."""
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if workers != self.roles:
            raise RuntimeError(f"DataConfig.workers is {self.config.workers} but the DataLoader has {workers} workers")
        rotation = self.shared.read(0)[1]
        return ((info.id if info is not None else 0) + rotation) % workers, rotation

    def __iter__(self) -> Iterator[Batch]:
        role, _ = self._role()
        epoch, _, skip, done = self.shared.read(role)
        slot = self.rank * self.roles + role
        counters = self.shared.counters(role)
        cfg = self.config
        if cfg.resampled:
            pieces = resampled_pieces(self.shards, make_rng(cfg.seed, epoch, slot, _SHARDS_RNG), cfg.weights)
            passes, limit = 1, None
        else:
            plan, limits = self.plan(epoch)
            pieces = plan[slot]
            # Equalized: as many passes over its pieces as the slot's batch count needs; the limit stops them.
            passes, limit = (None, max(0, limits[slot] - done)) if limits is not None else (1, None)
        buffer_rng = make_rng(cfg.seed, epoch, slot, _BUFFER_RNG)
        raw = self._passes(pieces, passes, cfg.shuffle_buffer if cfg.train else 0, buffer_rng, counters)
        crop_rng = make_rng(cfg.seed, epoch, slot, _CROP_RNG) if cfg.train else None
        augment = cfg.augment if cfg.train else ()
        numbered = stages.number(raw, skip, crop_rng, transform.variants(augment))
        decoded = stages.decode(numbered, cfg.resolution, counters, augment)
        in_worker = get_worker_info() is not None
        batches = stages.batch(
            decoded, cfg.batch_size, self.tokenize, counters, worker=role, drop_last=self.drop_last, shared=in_worker
        )
        return stages.limit(batches, limit)

    @staticmethod
    def _passes(pieces, passes: int | None, buffer: int, rng, counters: Counters) -> Iterator:
        """The slot's raw samples in the epoch's order: `passes` shuffled passes over its pieces (None: endless).

        Each pass is shuffled on its own, so a repeat never displaces a first-pass sample. A pass that finds nothing
        ends the stream rather than spin.
        """
        done = 0
        while passes is None or done < passes:
            seen = 0
            for sample in stages.shuffle(stages.read_pieces(pieces, counters), buffer, rng):
                seen += 1
                if done:
                    counters.add(REPEATED)
                yield sample
            done += 1
            if not seen:
                return


class ShardLoader(DataLoader):
    """A DataLoader over a ShardDataset that remembers what the trainer consumed: set_epoch, state_dict, counters.

    Iterating again after an interrupted pass (a `break`, or load_state_dict) continues where consumption stopped;
    a completed pass resets to the epoch's beginning.
    """

    def __init__(self, dataset: ShardDataset, *, pin_memory: bool | None = None):
        workers = dataset.config.workers
        super().__init__(
            dataset,
            batch_size=None,  # batches are made in the workers
            num_workers=workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=dataset.config.prefetch_factor if workers > 0 else None,
        )
        self._epoch = 0
        self._reset()

    def _reset(self) -> None:
        roles = self.dataset.roles
        self._positions, self._done, self._batches = [0] * roles, [0] * roles, 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch`: from its beginning, or from the loaded state if that is this epoch."""
        if epoch != self._epoch:
            self._epoch = epoch
            self._reset()
        self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        ds: ShardDataset = self.dataset
        ds.epoch = self._epoch
        # DataLoader hands out batches round-robin from worker 0: rotating roles makes a resumed pass continue the
        # interrupted interleaving, not restart it.
        ds.shared.begin(self._epoch, self._positions, self._done, self._batches % ds.roles)
        for b in super().__iter__():
            self._positions[b.worker] = b.position
            self._done[b.worker] += 1
            self._batches += 1
            yield b
        self._reset()

    def state_dict(self) -> dict:
        """Where the trainer is: epoch, batches consumed, and per worker role the stream position and batch count."""
        return {
            "epoch": self._epoch,
            "batches": self._batches,
            "positions": list(self._positions),
            "done": list(self._done),
            "workers": self.dataset.roles,
            "world_size": self.dataset.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); the worker count and world size must be those it was saved with."""
        ds: ShardDataset = self.dataset
        if (state["workers"], state["world_size"]) != (ds.roles, ds.world_size):
            raise ValueError(
                f"loader state saved with {state['workers']} workers x {state['world_size']} ranks cannot resume "
                f"exactly with {ds.roles} x {ds.world_size}; start the epoch over (set_epoch) instead"
            )
        self._epoch, self._batches = int(state["epoch"]), int(state["batches"])
        self._positions, self._done = [int(p) for p in state["positions"]], [int(d) for d in state["done"]]
        ds.epoch = self._epoch

    def counters(self) -> Counters:
        """Samples batched and problems skipped, by reason, summed over this rank's workers since the loader began."""
        ds: ShardDataset = self.dataset
        return Counters.total([ds.shared.counters(r) for r in range(ds.roles)])


def build_loader(
    config: DataConfig,
    *,
    tokenize: Tokenize | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
) -> ShardLoader:
    """The loader for a stored DataConfig (e.g. from a checkpoint) on this rank."""
    return ShardLoader(ShardDataset(config, tokenize=tokenize, rank=rank, world_size=world_size), pin_memory=pin_memory)


def make_loader(
    datasets: str | Sequence[str],
    *,
    batch_size: int,
    resolution: int = 224,
    tokenize: Tokenize | None = None,
    train: bool = True,
    workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    resampled: bool = False,
    weights: Sequence[float] | None = None,
    shuffle_buffer: int = 2000,
    equalize: bool | None = None,
    drop_last: bool | None = None,
    prefetch_factor: int = 4,
    pin_memory: bool | None = None,
    augment: Sequence[str] = (),
) -> ShardLoader:
    """A ShardLoader over one or more datasets (paths or fsspec URLs); see the module docstring and DataConfig.

    `tokenize(list[str]) -> (N, 77) int64`; default: CLIP's BPE from clipmodel/tokenizer.py. pin_memory defaults to
    whether CUDA is available. `rank` and `world_size` come from torch.distributed.
    """
    config = DataConfig(
        datasets=tuple(datasets) if not isinstance(datasets, str) else (datasets,),
        batch_size=batch_size,
        resolution=resolution,
        train=train,
        workers=workers,
        seed=seed,
        resampled=resampled,
        weights=tuple(weights) if weights is not None else None,
        shuffle_buffer=shuffle_buffer,
        equalize=equalize,
        drop_last=drop_last,
        prefetch_factor=prefetch_factor,
        augment=tuple(augment),
    )
    return build_loader(config, tokenize=tokenize, rank=rank, world_size=world_size, pin_memory=pin_memory)
