"""`wit train` under torchrun (2 gloo processes on CPU): the trainer sets the group up from the environment, saves
every rank's RNG and loader state, and a resumed 2-process run matches an uninterrupted one bit for bit.

Slow: three launches of two processes each import torch and start loader workers. The step-level equivalence of
two ranks with one process lives in test_train_step.py and runs by default.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipmodel.train import checkpointing as ckpt

REPO = Path(__file__).resolve().parents[3]


def _torchrun(run: Path, data: Path, model: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "wit.cli", "train", "--data", str(data), "--model", str(model), "--out", str(run),
        "--steps", str(steps), "--batch-size", "16", "--warmup", "2", "--save-every", "3", "--log-every", "1",
        "--workers", "1", *extra,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_run_resumes_exactly(shapes_dataset: Path, micro_model: Path, tmp_path: Path) -> None:
    model = micro_model
    whole, split = tmp_path / "whole", tmp_path / "split"
    done = _torchrun(whole, shapes_dataset, model, 6)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained steps 0..6") == 1  # rank 0 reports, rank 1 does not
    first = _torchrun(split, shapes_dataset, model, 3)
    assert first.returncode == 0, first.stderr[-3000:]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(split))
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and len(state["loader"]) == 2
    assert [s["world_size"] for s in state["loader"]] == [2, 2]
    assert state["data_config"]["batch_size"] == 8  # each rank's share of the global batch of 16
    again = _torchrun(split, shapes_dataset, model, 6, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]

    a = ckpt.load_checkpoint(ckpt.checkpoint_path(whole, 6))["model"]
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(split, 6))["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    losses = [json.loads(line)["loss"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert losses == [json.loads(line)["loss"] for line in (split / "metrics.jsonl").read_text().splitlines()]
