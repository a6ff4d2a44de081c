"""The training run's config: one frozen dataclass, layered defaults < --config file < command line, checked eagerly.

The resolved config is written to RUN/config.json and into every checkpoint as a dict of primitives, so a run can
be read back and resumed without unpickling anything. On resume the checkpoint's config is the starting point: only
the fields in RESUMABLE may change (they do not change what the model computes), anything else that differs is
refused, so a resumed run is the run it claims to be.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Training augmentations after the crop (clipmodel.transform.augmented): where pixels are, never their colour.
AUGMENTATIONS = ("flip", "rot90")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# May differ between a checkpoint and the run that resumes it: the length of the run, its bookkeeping, and where and
# how the same arithmetic runs (device, micro-batches, compilation). Resume is bit-exact only with these unchanged
# too, but a run moved to another machine must be able to go on. Workers are fixed: they split the data stream.
RESUMABLE = frozenset(
    {"steps", "save_every", "keep", "eval_dir", "eval_every", "log_every", "device", "compile", "accum_freq"}
)


class TrainError(ValueError):
    """Bad input to a training run that the user can fix (the command line shows it as one line)."""


@dataclass(frozen=True)
class DataSource:
    """One training dataset: a local path or fsspec URL, and its share of the samples when several are mixed."""

    path: str
    weight: float | None = None  # None: no mixing weights, shards are read in epochs

    @classmethod
    def parse(cls, spec: str) -> "DataSource":
        """`PATH` or `PATH:WEIGHT`; a colon followed by something that is not a number stays in the path (s3://)."""
        path, sep, tail = spec.rpartition(":")
        if sep and path:
            try:
                weight = float(tail)
            except ValueError:
                return cls(spec)
            if not math.isfinite(weight) or weight <= 0:
                raise TrainError(f"dataset weight must be a positive number, got {spec!r}")
            return cls(path, weight)
        return cls(spec)

    def to_spec(self) -> str:
        return self.path if self.weight is None else f"{self.path}:{self.weight:g}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is made from. Defaults are the CLIP paper's optimiser settings."""

    model: str
    data: tuple[DataSource, ...]
    steps: int = 1000
    batch_size: int = 64  # the global contrastive batch: all ranks and all micro-batches together
    accum_freq: int = 1  # micro-batches per step, with feature caching so the contrastive batch stays whole
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 100  # steps of linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    workers: int = 2  # DataLoader workers per rank
    local_loss: bool = False
    gather_with_grad: bool = True
    save_every: int = 500
    keep: int = 3  # checkpoints kept in RUN/checkpoints (the newest)
    log_every: int = 10
    eval_dir: str | None = None  # a labelled folder (labels.parquet + images) for zero-shot accuracy
    eval_every: int = 0  # 0: evaluate only at the end (when eval_dir is set)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    augment: tuple[str, ...] = ()  # training image augmentations after the crop: "flip", "rot90" (none: CLIP's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(_source(d) for d in self.data))
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "augment", tuple(self.augment))
        _check(self)

    @property
    def weights(self) -> list[float] | None:
        """Per-dataset mixing weights for the loader's resampled mode, or None when no dataset has one."""
        if all(d.weight is None for d in self.data):
            return None
        return [1.0 if d.weight is None else d.weight for d in self.data]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready primitives: what RUN/config.json and the checkpoints hold."""
        d = asdict(self)
        d["data"] = [asdict(s) for s in self.data]
        d["templates"] = list(self.templates)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TrainError(f"unknown training config keys: {sorted(unknown)}")
        if "model" not in d or "data" not in d:
            raise TrainError("a training config needs `model` and `data`")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise TrainError(f"bad training config: {e}") from None


def _source(d: DataSource | Mapping | str) -> DataSource:
    if isinstance(d, DataSource):
        return d
    if isinstance(d, str):
        return DataSource.parse(d)
    return DataSource(**d)


def _check(c: TrainConfig) -> None:
    positive = {"steps": c.steps, "batch_size": c.batch_size, "accum_freq": c.accum_freq}
    positive |= {"save_every": c.save_every, "keep": c.keep, "log_every": c.log_every}
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise TrainError(f"{name} must be a positive integer, got {value!r}")
    for name in ("warmup", "eval_every", "workers", "seed"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 0:
            raise TrainError(f"{name} must be a non-negative integer, got {getattr(c, name)!r}")
    if not c.data:
        raise TrainError("no training data: give at least one dataset")
    if c.batch_size % c.accum_freq:
        raise TrainError(f"batch_size {c.batch_size} is not a multiple of accum_freq {c.accum_freq}")
    if not (c.lr > 0 and c.weight_decay >= 0 and c.grad_clip >= 0 and c.eps > 0):
        raise TrainError("lr and eps must be positive, weight_decay and grad_clip non-negative")
    if not (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1):
        raise TrainError(f"betas must lie in [0, 1), got {c.beta1}, {c.beta2}")
    if c.precision not in PRECISIONS:
        raise TrainError(f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    if c.device not in DEVICES:
        raise TrainError(f"device must be one of {', '.join(DEVICES)}, got {c.device!r}")
    if c.local_loss and not c.gather_with_grad:
        raise TrainError("local_loss needs gather_with_grad: other ranks' columns would get no gradient")
    if unknown := set(c.augment) - set(AUGMENTATIONS):
        raise TrainError(f"unknown augmentations {sorted(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    if not c.templates or any("{}" not in t for t in c.templates):
        raise TrainError("every zero-shot template must hold one {} for the class name")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in a --config file: TrainConfig field names, any subset."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"config file {path} not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainError(f"config file {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise TrainError(f"config file {path}: expected a JSON object of training settings")
    unknown = set(d) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TrainError(f"config file {path}: unknown keys {sorted(unknown)}")
    return d


def layered(*layers: Mapping[str, Any]) -> TrainConfig:
    """A config from dicts of settings, later layers winning; None values mean "not given" and are skipped."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    if isinstance(merged.get("data"), str):
        merged["data"] = [merged["data"]]
    return TrainConfig.from_dict(merged)


def resume_config(saved: Mapping[str, Any], given: Mapping[str, Any]) -> TrainConfig:
    """The checkpoint's config with the settings given now applied; a change outside RESUMABLE is refused."""
    base = TrainConfig.from_dict(saved)
    given = {k: v for k, v in given.items() if v is not None}
    if "data" in given:
        given["data"] = [
            asdict(_source(d)) for d in ([given["data"]] if isinstance(given["data"], str) else given["data"])
        ]
    if "templates" in given:
        given["templates"] = list(given["templates"])
    before = base.to_dict()
    # The model is compared by architecture, not by name, by the trainer (a name and a JSON path may agree).
    fixed = {k: v for k, v in given.items() if k not in RESUMABLE and k != "model"}
    clashes = sorted(k for k, v in fixed.items() if _normal(v) != _normal(before.get(k)))
    if clashes:
        detail = ", ".join(f"{k}={_show(given[k])} (checkpoint: {_show(before.get(k))})" for k in clashes)
        raise TrainError(
            f"the run's checkpoint was trained with other settings: {detail}; use a new --out to change them"
        )
    return TrainConfig.from_dict(before | {k: v for k, v in given.items() if k in RESUMABLE})


def check_steps(cfg: TrainConfig, start: int) -> None:
    if cfg.steps <= start:
        raise TrainError(f"the run is already at step {start}; pass --steps above it to train further")


def _normal(v: Any) -> Any:
    """Compare settings as JSON would hold them: tuples as lists, 1 == 1.0."""
    return json.loads(json.dumps(v))


def _show(v: Any) -> str:
    if isinstance(v, list) and v and isinstance(v[0], dict) and "path" in v[0]:
        return " ".join(DataSource(**d).to_spec() for d in v)
    return json.dumps(v)


def parse_sources(specs: Sequence[str]) -> list[dict[str, Any]]:
    """--data arguments (`PATH` or `PATH:WEIGHT`) as config values."""
    return [asdict(DataSource.parse(s)) for s in specs]
