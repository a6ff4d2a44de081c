"""Training throughput: `wit train` vs open_clip's trainer on the same shards, model, batch, precision and workers.

    .venv/bin/python benchmarks/train.py [--models tiny RN50] [--runs 3] [--openclip-python PY]

open_clip's trainer needs torchvision, which breaks beside this project's torch, so it runs from a separate venv
(default /work/openclip_venv: `torch==2.14.1 torchvision==0.29.1 open_clip_torch webdataset braceexpand pandas`,
plus `pyarrow` so our trainer can run there too). Three trainers, alternating order each run:

- "wit@openclip-torch": our trainer (`wit train`, this checkout) run by the open_clip venv's Python, so both sides
  use the same torch build: the like-for-like comparison, and the ratio the target is about.
- "open_clip": `open_clip_train.main` on the same tar shards (webdataset, not resampled), our model configuration
  registered with open_clip as JSON (the layout benchmarks/openclip_parity.py checks loads identically).
- "wit": our trainer in this project's venv (its pinned torch), for reference.

Both trainers: fp32 on CPU, AdamW (lr 5e-4, wd 0.2, betas 0.9/0.98, eps 1e-6), a short linear warm-up, gradient
clipping at 1.0, 2 DataLoader workers, no checkpoint or evaluation inside the measured steps, a log line every step.
Throughput is the median over the steps after the first `--skip` of samples/s between consecutive steps, as each
trainer reports it (open_clip: batch size / that step's wall time; ours: samples between consecutive log calls over
the time between them); both include the wait for data. The shards are benchmarks/loader.py's (256 px JPEGs with
LAION captions); each model trains at its own input size (tiny: 64 px, RN50: 224 px), so the per-sample
preprocessing (decode, resize, crop) differs with the tool as it would for a user: open_clip's torchvision
RandomResizedCrop(scale 0.9-1) against our reduced-scale decode and random crop.
Writes benchmarks/results/train.json.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
sys.path.insert(0, str(REPO))
from loader import make_dataset  # noqa: E402 - benchmarks/loader.py: the shards, generated once and cached

WORK = ROOT / "work" / "train"
RESULTS = ROOT / "results" / "train.json"
TRAINERS = ("wit@openclip-torch", "open_clip", "wit")
# Per model: global batch and steps; small batches keep RN50 at 224 px to a few seconds a step on 2 cores.
PLANS = {"tiny": (64, 40), "tiny-rn": (64, 40), "RN50": (8, 10), "ViT-B-32": (8, 10)}
COMMON = {"lr": 5e-4, "weight_decay": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "grad_clip": 1.0, "warmup": 3}

# Registers our model's configuration with open_clip, then runs its trainer's main() on the given argv.
_OPENCLIP_RUNNER = """
import json, sys
from pathlib import Path
import open_clip
from open_clip_train.main import main
config_dir = Path(sys.argv[1])
open_clip.add_model_config(config_dir)
main(sys.argv[2:])
"""
# Our trainer from this checkout, under whichever Python runs it (wit.cli imports no Beam code for `train`).
_WIT_RUNNER = "import sys; sys.path.insert(0, {repo!r}); from wit.cli import main; sys.exit(main(sys.argv[1:]))"


def _openclip_config_dir(model: str, work: Path) -> str:
    """Our named config as open_clip's JSON, under a name open_clip does not already have."""
    from openclip_parity import openclip_config

    from clipmodel.factory import load_config

    folder = work / "openclip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"wit-{model}.json").write_text(json.dumps(openclip_config(load_config(model))))
    return str(folder)


def _openclip_command(py: str, model: str, urls: str, batch: int, steps: int, work: Path, seed: int) -> list[str]:
    argv = [
        "--train-data", urls, "--dataset-type", "webdataset", "--train-num-samples", str(batch * steps),
        "--model", f"wit-{model}", "--batch-size", str(batch), "--epochs", "1", "--workers", "2",
        "--lr", str(COMMON["lr"]), "--wd", str(COMMON["weight_decay"]), "--beta1", str(COMMON["beta1"]),
        "--beta2", str(COMMON["beta2"]), "--eps", str(COMMON["eps"]), "--warmup", str(COMMON["warmup"]),
        "--grad-clip-norm", str(COMMON["grad_clip"]), "--precision", "fp32", "--device", "cpu",
        "--log-every-n-steps", "1", "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--report-to", "", "--seed", str(seed), "--logs", str(work), "--name", "run",
    ]  # fmt: skip
    return [py, "-c", _OPENCLIP_RUNNER, _openclip_config_dir(model, WORK), *argv]


def _wit_command(py: str, model: str, dataset: Path, batch: int, steps: int, work: Path, seed: int) -> list[str]:
    config = {k: v for k, v in COMMON.items()} | {"log_every": 1, "save_every": 10 * steps, "precision": "fp32"}
    (work / "settings.json").write_text(json.dumps(config))
    argv = ["train", "--data", str(dataset), "--model", model, "--out", str(work / "run"), "--steps", str(steps),
            "--batch-size", str(batch), "--workers", "2", "--seed", str(seed), "--device", "cpu",
            "--config", str(work / "settings.json")]  # fmt: skip
    return [py, "-c", _WIT_RUNNER.format(repo=str(REPO)), *argv]


def _openclip_rates(work: Path) -> list[float]:
    """Per-step samples/s from open_clip's log, in step order."""
    log = (work / "run" / "out.log").read_text()
    return [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s", log)]


def _wit_rates(work: Path) -> list[float]:
    """Per-step samples/s from our metrics.jsonl (log_every 1; step 1's is timed from the start of training)."""
    lines = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return [x["samples_per_s"] for x in lines if x["kind"] == "train" and x.get("samples_per_s")]


def run(trainer: str, model: str, dataset: Path, urls: str, args, seed: int) -> dict:
    batch, steps = PLANS[model]
    work = Path(tempfile.mkdtemp(prefix=f"{trainer.replace('@', '-')}-{model}-", dir=WORK))
    if trainer == "open_clip":
        cmd = _openclip_command(args.openclip_python, model, urls, batch, steps, work, seed)
    else:
        py = sys.executable if trainer == "wit" else args.openclip_python
        cmd = _wit_command(py, model, dataset, batch, steps, work, seed)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} {model} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    # One rate per step, from step 1 (each trainer's first includes its loader's start) to the last.
    rates = _openclip_rates(work) if trainer == "open_clip" else _wit_rates(work)
    measured = rates[args.skip :]
    if len(rates) != steps or len(measured) < 3:
        raise RuntimeError(f"{trainer} {model}: only {len(rates)} step rates logged")
    return {"trainer": trainer, "model": model, "batch": batch, "steps": steps, "wall_s": wall,
            "samples_per_s": statistics.median(measured), "step_rates": rates,
            "load_before": load_before, "load_after": os.getloadavg()[0]}  # fmt: skip


def _torch_version(py: str) -> str:
    out = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "RN50"], choices=sorted(PLANS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the median (start-up, warm-up)")
    parser.add_argument("--samples", type=int, default=4000, help="dataset size (benchmarks/loader.py's shards)")
    parser.add_argument("--openclip-python", default="/work/openclip_venv/bin/python")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    dataset = make_dataset(args.samples)
    manifest = json.loads((dataset / "manifest.json").read_text())
    shards = sorted(s["tar"]["path"] for s in manifest["shards"])
    first, last = Path(shards[0]).stem, Path(shards[-1]).stem  # consecutive numbered names: a brace range
    if len(shards) != int(last) - int(first) + 1:
        raise SystemExit(f"{dataset}: shard names are not one consecutive range")
    urls = str(dataset / Path(shards[0]).parent / f"{{{first}..{last}}}.tar")  # what open_clip's --train-data takes
    for model in args.models:
        batch, steps = PLANS[model]
        if batch * steps > manifest["rows"]:
            raise SystemExit(f"{model}: {batch * steps} samples needed, the dataset has {manifest['rows']}")
    runs = []
    for model in args.models:
        for r in range(args.runs):
            trainers = args.trainers if r % 2 == 0 else args.trainers[::-1]
            for trainer in trainers:
                result = run(trainer, model, dataset, urls, args, seed=r) | {"run": r}
                print(json.dumps({k: v for k, v in result.items() if k != "step_rates"}), flush=True)
                runs.append(result)

    def med(trainer: str, model: str) -> float:
        return statistics.median(x["samples_per_s"] for x in runs if x["trainer"] == trainer and x["model"] == model)

    medians = {m: {t: med(t, m) for t in args.trainers} for m in args.models}
    ratios = {}
    if {"wit@openclip-torch", "open_clip"} <= set(args.trainers):
        ratios = {m: v["wit@openclip-torch"] / v["open_clip"] for m, v in medians.items()}
    summary = {
        "benchmark": "train",
        "what": "training samples/s (median over steps after the first few) of our trainer vs open_clip's on the "
        "same shards, model configuration, global batch, fp32, AdamW settings, 2 DataLoader workers, CPU",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "torch": {"wit": _torch_version(sys.executable), "openclip_venv": _torch_version(args.openclip_python)},
        "plans": {m: {"batch": PLANS[m][0], "steps": PLANS[m][1]} for m in args.models},
        "settings": vars(args) | {"common": COMMON},
        "median_samples_per_s": medians,
        "ratio_wit_over_openclip_same_torch": ratios,
        "target": {"cpu": 1.0, "gpu_bf16_compile": 1.2},
        "load_average_median": statistics.median(x["load_before"] for x in runs),
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("torch", "median_samples_per_s", "ratio_wit_over_openclip_same_torch")}))


if __name__ == "__main__":
    main()
