"""The CLIP trainer behind `wit train`: set a run up (fresh or from its last checkpoint), step, log, evaluate, save.

Exact resume: a run stopped at any point (SIGKILL included) and resumed from its last checkpoint reaches the same
parameters as one that never stopped, bit for bit on CPU with the same world size and workers. What makes it so:
the checkpoint holds the model, AdamW and GradScaler states, every rank's RNG states and loader position (the
loader replays its deterministic stream to exactly the next batch), and the step; the learning rate is a pure
function of the step; CPU runs use deterministic algorithms; checkpoints are written atomically.
"""

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from clipmodel.data.loader import DataConfig, ShardLoader, build_loader
from clipmodel.data.shardlist import list_shards
from clipmodel.eval.zeroshot import LabelledSet, accuracy, read_labelled_folder, read_labels
from clipmodel.factory import load_config
from clipmodel.loss import ClipLoss
from clipmodel.model import CLIP, CLIPConfig
from clipmodel.train import checkpointing as ckpt
from clipmodel.train import distributed as D
from clipmodel.train.config import TrainConfig, TrainError, check_steps, layered, resume_config
from clipmodel.train.log import RunLog
from clipmodel.train.optim import lr_at, make_optimizer, set_lr
from clipmodel.train.step import Precision, train_step
from schemas.manifest import MANIFEST_NAME

CONFIG_FILE = "config.json"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class Summary:
    """What a finished run reports back to the command line."""

    run_dir: str
    start_step: int
    step: int
    samples: int
    first_loss: float | None = None
    last_loss: float | None = None
    eval: dict[str, float] | None = None
    checkpoint: str | None = None
    seconds: float = 0.0


# ---- setting a run up ------------------------------------------------------------------------------------------


def _model_config(name: str) -> CLIPConfig:
    try:
        return load_config(name)
    except (ValueError, FileNotFoundError) as e:
        raise TrainError(str(e)) from None


def _dataset_ids(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Each dataset with the sha256 of its manifest.json (None for img2dataset folders and bare tars) and its rows
    (None where a shard's count is unknown): what the run learned from, for reports that compare runs by data size."""
    return [
        {
            "path": d.path,
            "weight": d.weight,
            "manifest_sha256": ckpt.file_sha256(f"{d.path.rstrip('/')}/{MANIFEST_NAME}"),
            "rows": _rows(d.path),
        }
        for d in cfg.data
    ]


def _rows(path: str) -> int | None:
    try:
        rows = [s.rows for s in list_shards(path)]
    except (OSError, ValueError):  # the loader reports a bad dataset itself, with its own words
        return None
    return None if None in rows else sum(rows)


def resolve_run(given: Mapping[str, Any], run_dir: Path, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and, when resuming, its last checkpoint; every refusal a TrainError with one line."""
    latest = ckpt.latest_checkpoint(run_dir)
    if not resume:
        if latest is not None:
            raise TrainError(f"{run_dir} already holds a run ({latest.name}); pass --resume or choose another --out")
        cfg = layered(given)
        _model_config(cfg.model)  # an unknown name fails before anything is built
        return cfg, None
    if latest is None:
        raise TrainError(f"nothing to resume: no checkpoint in {run_dir / ckpt.CHECKPOINT_DIR}")
    state = ckpt.load_checkpoint(latest)
    cfg = resume_config(state["config"], given)
    if given.get("model") is not None and _model_config(given["model"]).to_dict() != state["model_config"]:
        raise TrainError(
            f"--model {given['model']} is not the architecture the checkpoint {latest.name} was trained as"
        )
    check_steps(cfg, int(state["step"]))
    return cfg, state


def _check_datasets(saved: list[dict], now: list[dict]) -> None:
    for before, after in zip(saved, now, strict=True):
        if before["manifest_sha256"] != after["manifest_sha256"]:
            raise TrainError(f"dataset {after['path']} changed since the checkpoint (its manifest.json differs)")


def _data_config(cfg: TrainConfig, model_cfg: CLIPConfig, world_size: int) -> DataConfig:
    if cfg.batch_size % (world_size * cfg.accum_freq):
        raise TrainError(
            f"batch_size {cfg.batch_size} must divide into {world_size} ranks x {cfg.accum_freq} micro-batches"
        )
    return DataConfig(
        datasets=tuple(d.path for d in cfg.data),
        batch_size=cfg.batch_size // world_size,
        resolution=model_cfg.vision.image_size,
        workers=cfg.workers,
        seed=cfg.seed,
        resampled=cfg.weights is not None,
        weights=tuple(cfg.weights) if cfg.weights is not None else None,
        context_length=model_cfg.text.context_length,
        augment=cfg.augment,
    )


def _share_cores(workers: int) -> None:
    """On CPU, leave the loader workers their cores: this process's torch threads are the cores this rank has less
    its workers (at least one). torch's default, a thread per core, oversubscribes them, and its threads then spin
    at every barrier while another process holds the core: with 2 threads and 1 worker on 2 cores, a busy neighbour
    took a run from 614 to 7 samples/s. An explicit OMP_NUM_THREADS is the user's choice and is kept."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // ranks - workers))


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_stream(loader: ShardLoader) -> Iterator:
    """Batches across epochs without end; an epoch that starts from its beginning and yields nothing is an error."""
    while True:
        fresh = loader.state_dict()["batches"] == 0
        yielded = 0
        for batch in loader:
            yielded += 1
            yield batch
        if fresh and not yielded:
            raise TrainError(f"the data yields no full batch of {loader.dataset.config.batch_size} per rank")
        loader.set_epoch(loader.epoch + 1)


# ---- the run ---------------------------------------------------------------------------------------------------


class Trainer:
    """One process's share of a run: built from the resolved config (and checkpoint, when resuming), then `run()`."""

    def __init__(self, cfg: TrainConfig, state: dict | None, run_dir: str | Path, info: D.DistInfo):
        self.run_dir, self.cfg, self.info = Path(run_dir), cfg, info
        self.model_cfg = _model_config(self.cfg.model)
        self.datasets = _dataset_ids(self.cfg)
        if state is not None:
            _check_datasets(state["datasets"], self.datasets)
            if state["world_size"] != self.info.world_size:
                raise TrainError(
                    f"the checkpoint was written by {state['world_size']} processes; resume with as many "
                    f"(this is {self.info.world_size}), so every rank continues its own data stream exactly"
                )
        self.data_cfg = _data_config(self.cfg, self.model_cfg, self.info.world_size)
        if self.info.device.type == "cpu":
            _share_cores(self.cfg.workers)
        self.precision = Precision.resolve(self.cfg.precision, self.info.device)
        self.step = int(state["step"]) if state else 0
        self.samples = int(state["samples_seen"]) if state else 0
        self.start_step = self.step
        self.eval_set = self._eval_set()  # before the model: a bad folder fails in seconds
        self._build(state)
        self._write_config()
        self.log = RunLog(
            self.run_dir,
            enabled=self.info.is_main,
            start_step=self.step,
            total_steps=self.cfg.steps,
            resumed=bool(state),
        )
        if state is not None:
            # Last: building the model and loader above drew from the generators the checkpoint restores.
            ckpt.set_rng_state(state["rng"][self.info.rank])

    def _build(self, state: dict | None) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.raw_model = CLIP(self.model_cfg)
        if state is not None:
            self.raw_model.load_state_dict(state["model"])
        self.raw_model.to(info.device).train()
        model: torch.nn.Module = self.raw_model
        if info.world_size > 1:
            ids = [info.device.index] if info.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = torch.compile(model) if cfg.compile else model
        self.optimizer = make_optimizer(self.raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        self.scaler = self.precision.grad_scaler()
        self.loss_fn = ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad)
        try:
            self.loader = build_loader(self.data_cfg, rank=info.rank, world_size=info.world_size)
        except (ValueError, FileNotFoundError) as e:
            raise TrainError(str(e)) from None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            try:
                self.loader.load_state_dict(state["loader"][info.rank])
            except ValueError as e:
                raise TrainError(str(e)) from None
        _seed_all(cfg.seed + info.rank)  # each rank's own stream for anything random in the loop

    def _run_record(self) -> dict[str, Any]:
        """What RUN/config.json and every checkpoint say the run is made of."""
        return {
            "config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "data_config": self.data_cfg.to_dict(),
            "datasets": self.datasets,
            "world_size": self.info.world_size,
            "precision": self.precision.name,
            "device": self.info.device.type,
            "torch": str(torch.__version__),  # a str subclass, which weights_only loading refuses
        }

    def _write_config(self) -> None:
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_text_atomic(self.run_dir / CONFIG_FILE, json.dumps(self._run_record(), indent=2) + "\n")

    def _eval_set(self) -> LabelledSet | None:
        """Rank 0 evaluates; the others only check the folder, so a bad one stops every rank, not just the first."""
        if not self.cfg.eval_dir:
            return None
        try:
            if not self.info.is_main:
                read_labels(self.cfg.eval_dir)  # the labels and file names only: nothing decoded
                return None
            return read_labelled_folder(self.cfg.eval_dir, self.model_cfg.vision.image_size)
        except (OSError, ValueError) as e:
            raise TrainError(f"--eval-dir: {e}") from None

    # ---- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> Summary:
        cfg, info = self.cfg, self.info
        summary = Summary(str(self.run_dir), self.start_step, self.step, self.samples)
        t0 = time.monotonic()
        self.log.throughput(self.samples)
        stream = batch_stream(self.loader)
        while self.step < cfg.steps:
            batch = next(stream)
            images = batch.images.to(info.device, non_blocking=True)  # (B, 3, R, R)
            texts = batch.tokens.to(info.device, non_blocking=True)  # (B, L)
            lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.steps)
            set_lr(self.optimizer, lr)
            stats = train_step(
                self.model, self.raw_model, self.loss_fn, self.optimizer, self.scaler, images, texts,
                accum_freq=cfg.accum_freq, grad_clip=cfg.grad_clip, precision=self.precision,
            )  # fmt: skip
            self.step += 1
            self.samples += cfg.batch_size
            self.log.advance()
            done = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or done or self.step == 1:
                loss = self._log_train(stats, lr)
                summary.first_loss = loss if summary.first_loss is None else summary.first_loss
                summary.last_loss = loss
            if self.eval_set is not None and (done or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                summary.eval = self._evaluate()
            if self.step % cfg.save_every == 0 or done:
                summary.checkpoint = self.save()
        summary.step, summary.samples, summary.seconds = self.step, self.samples, time.monotonic() - t0
        return summary

    def _log_train(self, stats, lr: float) -> float:
        """Write a train line (every rank joins the reductions); returns the global loss."""
        loss = float(D.mean_over_ranks(stats.loss.float(), self.info))
        counters = self._data_counters()
        scale = float(stats.logit_scale)
        self.log.record(
            "train",
            {
                "step": self.step,
                "samples": self.samples,
                "epoch": self.loader.epoch,
                "loss": loss,
                "lr": lr,
                "logit_scale": scale,
                "temperature": 1.0 / scale,
                "grad_norm": None if stats.grad_norm is None else float(stats.grad_norm),
                "samples_per_s": self.log.throughput(self.samples),
                **{f"data_{k}": v for k, v in counters.items()},
            },
        )
        return loss

    def _data_counters(self) -> dict[str, int]:
        """The loader's counters summed over ranks: samples batched and problems skipped, by reason."""
        from clipmodel.data.tarstream import Counters

        local = torch.tensor(self.loader.counters().counts, dtype=torch.int64)  # (F,)
        if self.info.world_size > 1:
            local = local.to(self.info.device)
            torch.distributed.all_reduce(local)
        return {name: int(n) for name, n in zip(Counters.FIELDS, local.tolist(), strict=True) if n}

    def _evaluate(self) -> dict[str, float]:
        self.raw_model.eval()
        try:
            with self.precision.autocast():
                result = accuracy(self.raw_model, self.eval_set, self.cfg.templates, self.info.device)
        finally:
            self.raw_model.train()
        self.log.record("eval", {"step": self.step, "samples": self.samples, **result})
        return result

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors, plain containers and primitives (see
        clipmodel.train.checkpointing)."""
        rng = D.gather_objects(ckpt.rng_state(), self.info)
        loader = D.gather_objects(self.loader.state_dict(), self.info)
        cfg = self.cfg
        schedule = {
            "kind": "warmup_cosine",
            "step": self.step,
            "base_lr": cfg.lr,
            "warmup": cfg.warmup,
            "total": cfg.steps,
        }
        return {
            "format": ckpt.FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "samples_seen": self.samples,
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": schedule,
            "rng": rng,
            "loader": loader,
            **self._run_record(),
        }

    def save(self) -> str:
        """Write the checkpoint of the current step (every rank takes part; rank 0 writes) and prune old ones."""
        state = self.checkpoint_state()
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        if self.info.is_main:
            ckpt.save_atomic(state, path)
            ckpt.prune(self.run_dir, self.cfg.keep)
        D.barrier(self.info)
        return str(path)

    def close(self) -> None:
        self.log.close()


def train(given: Mapping[str, Any], run_dir: str | Path, *, resume: bool = False) -> Summary:
    """Run (or resume) a training run in this process; under torchrun every process calls this.

    `given` holds the settings the user gave (TrainConfig names); the defaults, or the checkpoint's settings when
    resuming, fill in the rest.
    """
    cfg, state = resolve_run(given, Path(run_dir), resume)
    info = D.init_distributed(cfg.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if info.device.type == "cpu":
        torch.use_deterministic_algorithms(True)  # bit-identical resume; CPU kernels have deterministic paths
    trainer = None
    try:
        trainer = Trainer(cfg, state, run_dir, info)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        torch.use_deterministic_algorithms(deterministic)
        D.shutdown(info)
