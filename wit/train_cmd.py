"""`wit train`: train CLIP on curated shards, with checkpoints that resume exactly, and zero-shot evaluation.

Run it as is for one process, or under `torchrun --nproc_per_node N -m wit.cli train ...` for DDP. torch and the
trainer are imported only when the command runs, so `wit --help` stays fast.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

from clipmodel.train.config import AUGMENTATIONS, TrainConfig
from wit import CommandError

# The defaults the flags' help shows: TrainConfig is their only home (its model and data have none).
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

_EPILOG = """\
settings are layered: defaults < --config FILE (JSON, the same names with underscores) < flags given here.
--resume continues RUN from its last checkpoint with the settings it was started with; only --steps, --save-every,
--keep, --log-every, --eval-dir, --eval-every, --device, --accum-freq and --compile may change. Writes RUN/config.json,
RUN/metrics.jsonl and RUN/checkpoints/step-NNNNNNNN.pt.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train CLIP on one or more datasets (single process or under torchrun)",
        description="Train a CLIP model on curated shards (ours or img2dataset's): AdamW with warm-up and cosine "
        "decay, the contrastive loss over the global batch, checkpoints that resume exactly.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every default is None, meaning "not given": the trainer's defaults, the config file or the checkpoint decide.
    p.add_argument("--data", nargs="+", metavar="DATASET[:WEIGHT]", help="dataset folders or URLs; weights mix them")
    p.add_argument("--model", metavar="NAME", help="a named architecture (`wit model list`) or a JSON config path")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder: config, metrics, checkpoints")
    p.add_argument("--steps", type=int, metavar="N", help=f"total optimiser steps of the run (default {_D['steps']})")
    p.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file of training settings")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"global contrastive batch, all ranks (default {_D['batch_size']})")  # fmt: skip
    p.add_argument("--accum-freq", type=int, metavar="K",
                   help=f"micro-batches per step, features cached (default {_D['accum_freq']})")  # fmt: skip
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {_D['lr']:g})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW decoupled weight decay (default {_D['weight_decay']:g})")
    p.add_argument("--warmup", type=int, metavar="N", help=f"linear warm-up steps (default {_D['warmup']})")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help=f"max gradient norm, 0 for none (default {_D['grad_clip']})")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help=f"default {_D['precision']} (auto: bf16 on GPU, fp32 on CPU)")  # fmt: skip
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help=f"default {_D['device']}")
    p.add_argument("--seed", type=int, help=f"initial weights, data order and crops (default {_D['seed']})")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"data loader workers per process (default {_D['workers']})")  # fmt: skip
    p.add_argument("--local-loss", action="store_const", const=True, help="each rank computes only its rows")
    p.add_argument("--save-every", type=int, metavar="N",
                   help=f"checkpoint every N steps (default {_D['save_every']}), and at the end")  # fmt: skip
    p.add_argument("--keep", type=int, metavar="K", help=f"checkpoints kept, newest first (default {_D['keep']})")
    p.add_argument("--log-every", type=int, metavar="N", help=f"metrics line every N steps (default {_D['log_every']})")
    p.add_argument("--augment", nargs="+", choices=AUGMENTATIONS, metavar="AUG",
                   help="training image augmentations after the crop: flip (left-right), rot90 (quarter turns, for "
                   "pictures with no up); none by default, as CLIP")  # fmt: skip
    p.add_argument("--eval-dir", metavar="DIR", help="labelled folder (labels.parquet + images) for zero-shot")
    p.add_argument("--eval-every", type=int, metavar="N", help="zero-shot every N steps (default: at the end only)")
    p.set_defaults(func=run_train)


_FLAGS = (
    "model", "steps", "batch_size", "accum_freq", "lr", "weight_decay", "warmup", "grad_clip", "precision",
    "compile", "device", "seed", "workers", "local_loss", "save_every", "keep", "log_every", "eval_every", "augment",
)  # fmt: skip


def _absolute(spec: str) -> str:
    """Local paths made absolute, so a run resumed from another directory names the same data."""
    if "://" in spec:
        return spec
    path, sep, weight = spec.rpartition(":")
    try:
        float(weight)
    except ValueError:
        return os.path.abspath(spec)
    return f"{os.path.abspath(path)}{sep}{weight}" if sep and path else os.path.abspath(spec)


def given_settings(args: argparse.Namespace) -> dict:
    """The settings the user gave: the --config file's, overridden by flags on the command line."""
    from clipmodel.train.config import load_config_file, parse_sources

    given = load_config_file(args.config) if args.config else {}
    if isinstance(given.get("data"), list | str):
        specs = [given["data"]] if isinstance(given["data"], str) else given["data"]
        given["data"] = [_absolute(s) if isinstance(s, str) else s for s in specs]
    if isinstance(given.get("eval_dir"), str):
        given["eval_dir"] = os.path.abspath(given["eval_dir"])
    given.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None})
    if args.data:
        given["data"] = parse_sources([_absolute(s) for s in args.data])
    if args.eval_dir:
        given["eval_dir"] = os.path.abspath(args.eval_dir)
    return given


def run_train(args: argparse.Namespace) -> int:
    from clipmodel.train.config import TrainError
    from clipmodel.train.trainer import train

    try:
        given = given_settings(args)
        if not args.resume:
            for name in ("data", "model"):
                if not given.get(name):
                    raise CommandError(f"--{name} is required for a new run (or give it in --config)")
            _check_datasets(given["data"])
        summary = train(given, args.out, resume=args.resume)
    except TrainError as e:
        raise CommandError(str(e)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        _report(summary)
    return 0


def _check_datasets(sources: list) -> None:
    """A missing local dataset fails here, before any model is built."""
    from clipmodel.train.config import DataSource

    for source in sources:
        path = source["path"] if isinstance(source, dict) else DataSource.parse(str(source)).path
        if "://" not in path and not Path(path).exists():
            raise CommandError(f"dataset {path} not found")


def _report(s) -> None:
    losses = "" if s.first_loss is None else f", loss {s.first_loss:.4f} -> {s.last_loss:.4f}"
    print(f"trained steps {s.start_step}..{s.step} ({s.samples} samples) in {s.seconds:.1f}s{losses}")
    if s.eval:
        print("zero-shot: " + json.dumps({k: round(v, 4) for k, v in s.eval.items()}))
    if s.checkpoint:
        print(f"checkpoint: {s.checkpoint}")
