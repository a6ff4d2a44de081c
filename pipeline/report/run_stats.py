"""A training run's metrics (RUN/metrics.jsonl, RUN/config.json) as the report's "run" stats dict."""

import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from clipmodel.train.log import METRICS_FILE

RUN_FORMAT = "wit-builder-run-stats"
VERSION = 1
# clipmodel.train.trainer.CONFIG_FILE; not imported, because clipmodel.train.trainer pulls in torch.
CONFIG_FILE = "config.json"

TRAIN_FIELDS = ("step", "samples", "loss", "lr", "temperature", "samples_per_s")
EVAL_FIELDS = ("step", "samples", "top1", "top5")


def _number(value: Any) -> float | int | None:
    """JSON numbers as they are; anything else (null, NaN written as a string...) as None, i.e. a gap in the plot."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of metrics.jsonl. A torn last line (the run was killed mid-write) is skipped; any other
    unreadable line is an error, since it means the file is not what the trainer writes."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read metrics: {e}") from None
    raw = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    lines = []
    for i, (n, line) in enumerate(raw):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i == len(raw) - 1:
                continue
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(obj, dict) or obj.get("kind") not in ("train", "eval"):
            raise ValueError(f"{path}:{n}: not a metrics line (needs kind 'train' or 'eval')")
        if isinstance(obj.get("step"), bool) or not isinstance(obj.get("step"), int):
            raise ValueError(f"{path}:{n}: metrics line has no integer step")
        if obj["kind"] == "train" and _number(obj.get("loss")) is None and obj.get("loss") is not None:
            raise ValueError(f"{path}:{n}: train line has a non-numeric loss")
        lines.append(obj)
    if not lines:
        raise ValueError(f"{path}: no metrics lines")
    return lines


def _columns(lines: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list]:
    return {name: [_number(line.get(name)) for line in lines] for name in names}


def _config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON run config: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    return config


def _dataset(record: dict[str, Any] | None) -> tuple[str | None, int | None]:
    """(name, rows) of what the run trained on, from its config.json: the name is the dataset folder's (a tar's
    DATASET/shards/N.tar gives DATASET), joined with "+" for several; rows are None unless every dataset's are known."""
    datasets = (record or {}).get("datasets") or []
    names, rows = [], []
    for d in datasets:
        path = PurePosixPath(str(d.get("path", "")).rstrip("/"))
        if path.suffix == ".tar":
            path = path.parent.parent if path.parent.name == "shards" else path.parent
        if path.name not in names:
            names.append(path.name)
        rows.append(d.get("rows"))
    known = bool(rows) and all(isinstance(r, int) for r in rows)
    return ("+".join(names) or None), (sum(rows) if known else None)


def run_stats(run_dir: Path, others: Sequence[Path] = ()) -> dict[str, Any]:
    """The contract's "run" stats of the training run in `run_dir` (ValueError with a one-line message when the
    folder holds no readable metrics.jsonl). With `others`, "runs" holds every run's zero-shot curve and data size,
    this one first, for the page's scaling charts."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {METRICS_FILE}, so not a training run folder")
    lines = _lines(path)
    train = [line for line in lines if line["kind"] == "train"]
    evals = [line for line in lines if line["kind"] == "eval"]
    config = _config(run_dir)
    dataset, rows = _dataset(config)
    out = {
        "format": RUN_FORMAT,
        "version": VERSION,
        "run": str(run_dir),
        "config": config,
        "dataset": dataset,
        "rows": rows,
        "train": _columns(train, TRAIN_FIELDS),
        "eval": _columns(evals, EVAL_FIELDS),
    }
    if others:
        runs = [out, *(run_stats(Path(o)) for o in others)]
        out["runs"] = [{k: r[k] for k in ("run", "dataset", "rows", "eval")} for r in runs]
    return out
