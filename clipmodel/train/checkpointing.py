"""Training checkpoints: written atomically, read with `weights_only=True`, the last K kept, RNG states as tensors.

A checkpoint holds only tensors, plain containers and primitives, so loading one runs no code (a pickled object of
any class is refused by torch's restricted unpickler). What it holds is listed in
`clipmodel.train.trainer.checkpoint_state`.
"""

import hashlib
import os
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipmodel.checkpoint import read_plain

CHECKPOINT_DIR = "checkpoints"
FORMAT = "wit-builder-train-checkpoint"
_NAME = re.compile(r"step-(\d{8,})\.pt")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in RUN/checkpoints, oldest first; temp files are not listed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = ((_NAME.fullmatch(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError for anything `torch.load(weights_only=True)` would refuse: found when saving, not resuming."""
    if type(obj) in (dict, OrderedDict):  # state_dict() returns an OrderedDict, which torch allows
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple) and type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif type(obj) not in _PLAIN and not isinstance(obj, torch.Tensor):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: checkpoints hold plain data")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, rename over `path`, fsync the folder.

    A reader (or a resume after SIGKILL or power loss) sees the old file or the whole new one, never a torn one.
    The object is checked first (`check_plain`): one that could not be loaded back is never written.
    """
    check_plain(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class NotATrainingCheckpoint(ValueError):
    """A file that loads safely but is not one of our training checkpoints (a bare state dict, say)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, unpickled with `weights_only=True`; ValueError for anything else."""
    path = Path(path)
    try:
        obj = read_plain(path, "checkpoint")
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not is_training_checkpoint(obj):
        raise NotATrainingCheckpoint(f"{path}: not a wit training checkpoint")
    return obj


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and temp files a killed writer left); returns what went."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    gone = [p for _, p in list_checkpoints(run_dir)[:-keep]]
    if folder.is_dir():
        gone += [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name and _is_stale(p)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _is_stale(tmp: Path) -> bool:
    """A temp file whose writer is gone (the pid in its name is not this process)."""
    return not tmp.name.endswith(f".tmp-{os.getpid()}")


# ---- RNG states as tensors and plain lists (what weights_only loading accepts) -----------------------------------


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (when present) CUDA generator states, as primitives and tensors."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured; CUDA states only where this process has as many devices."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def file_sha256(path: str) -> str | None:
    """sha256 of a file given by local path or fsspec URL; None when it does not exist."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            digest = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: "<shard>.tar/manifest.json" of a bare tar
        return None
