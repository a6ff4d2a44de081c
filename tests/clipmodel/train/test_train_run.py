"""Whole training runs on a dataset made from the synthetic web: the loss falls, outputs are complete, a run killed
with SIGKILL resumes to bit-identical parameters, and (slow) zero-shot accuracy climbs above chance."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipmodel.train import checkpointing as ckpt
from clipmodel.train.log import METRICS_FILE
from clipmodel.train.trainer import CONFIG_FILE, train

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    return [line for line in lines if line["kind"] == kind]


def test_short_tiny_run_lowers_the_loss_and_writes_everything(shapes_dataset: Path, web_dir: Path, tmp_path) -> None:
    run = tmp_path / "run"
    given = {"model": "tiny", "data": [str(shapes_dataset)], "steps": 12, "batch_size": 16, "warmup": 2}
    given |= {"lr": 1e-3, "log_every": 1, "save_every": 6, "workers": 1, "eval_dir": str(web_dir / "eval")}
    summary = train(given, run)

    losses = [m["loss"] for m in _metrics(run)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses  # it learns, on 16-way contrastive batches
    first = _metrics(run)[0]
    assert first["step"] == 1 and first["samples"] == 16 and first["lr"] == pytest.approx(5e-4)
    assert first["temperature"] == pytest.approx(0.07, abs=1e-3) and first["data_samples"] >= 16
    [evaluated] = _metrics(run, "eval")
    assert evaluated["step"] == 12 and 0 <= evaluated["top1"] <= evaluated["top5"] <= 1
    assert summary.eval == {"top1": evaluated["top1"], "top5": evaluated["top5"]}

    assert [s for s, _ in ckpt.list_checkpoints(run)] == [6, 12]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert (state["step"], state["samples_seen"], state["world_size"]) == (12, 192, 1)
    assert state["optimizer"]["state"] and state["scaler"] == {}  # fp32 on CPU: no loss scaling
    assert state["schedule"] == {"kind": "warmup_cosine", "step": 12, "base_lr": 1e-3, "warmup": 2, "total": 12}
    assert state["loader"][0]["batches"] == 12 and len(state["rng"]) == 1
    manifest_sha = ckpt.file_sha256(str(shapes_dataset / "manifest.json"))
    rows = json.loads((shapes_dataset / "manifest.json").read_text())["rows"]
    assert state["datasets"] == [
        {"path": str(shapes_dataset), "weight": None, "manifest_sha256": manifest_sha, "rows": rows}
    ]
    written = json.loads((run / CONFIG_FILE).read_text())
    assert written["config"] == state["config"] and written["model_config"]["embed_dim"] == 128


def _command(run: Path, data: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "wit.cli", "train", "--data", str(data), "--model", str(model), "--out", str(run),
        "--steps", "16", "--batch-size", "16", "--warmup", "3", "--save-every", "3", "--log-every", "1",
        "--workers", "1", *extra,
    ]  # fmt: skip


def test_run_killed_after_a_checkpoint_resumes_to_bit_identical_parameters(
    shapes_dataset: Path, micro_model: Path, tmp_path: Path
) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Both start together: on two cores the reference run costs little extra wall time.
    reference = subprocess.Popen(
        _command(whole, shapes_dataset, micro_model), env=env, cwd=REPO, stderr=subprocess.PIPE
    )
    victim = subprocess.Popen(_command(killed, shapes_dataset, micro_model), env=env, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while ckpt.latest_checkpoint(killed) is None:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    at_kill = [s for s, _ in ckpt.list_checkpoints(killed)]
    assert at_kill and at_kill[-1] < 16, at_kill  # killed mid-run, not after it finished

    resumed = subprocess.run(
        [*_command(killed, shapes_dataset, micro_model), "--resume"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained steps {at_kill[-1]}..16" in resumed.stdout
    assert reference.wait() == 0, reference.stderr.read().decode()

    a = ckpt.load_checkpoint(ckpt.checkpoint_path(whole, 16))
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(killed, 16))
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["loader"] == b["loader"]
    # The metrics file reads as one run: the killed run's lines past its checkpoint were dropped on resume.
    assert [m["loss"] for m in _metrics(killed)] == [m["loss"] for m in _metrics(whole)]
    assert [m["step"] for m in _metrics(killed)] == list(range(1, 17))


@pytest.mark.slow
def test_longer_tiny_run_beats_chance_at_zero_shot(make_shapes_dataset, web_dir: Path, tmp_path: Path) -> None:
    """200 steps of 32 pairs drawn from 2,048 pictures of the web's 30 train classes, then zero-shot on all 36
    classes of its eval set (6 held out: colour-shape pairs never seen together). Chance is 1/36."""
    data = make_shapes_dataset(tmp_path / "data", samples=2048, per_shard=256)
    given = {"model": "tiny", "data": [str(data)], "steps": 200, "batch_size": 32, "warmup": 20}
    given |= {"log_every": 10, "save_every": 1000, "workers": 1, "eval_dir": str(web_dir / "eval"), "eval_every": 100}
    summary = train(given, tmp_path / "run")
    print(f"zero-shot after {summary.step} steps in {summary.seconds:.0f}s: {summary.eval}, loss {summary.last_loss}")
    assert summary.last_loss < summary.first_loss - 1.0
    assert summary.eval["top1"] > 3 / 36 and summary.eval["top5"] > 12 / 36  # seen: 0.31 and 0.89 at 300 steps


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(shapes_dataset: Path, micro_model: Path, tmp_path: Path) -> None:
    """--compile (torch.compile, inductor: about a minute of compiling on CPU) changes speed, not the steps."""
    given = {"model": str(micro_model), "data": [str(shapes_dataset)], "steps": 3, "batch_size": 16, "warmup": 1}
    given |= {"log_every": 1, "workers": 0}
    train(given | {"compile": True}, tmp_path / "compiled")
    train(given, tmp_path / "eager")
    compiled, eager = _metrics(tmp_path / "compiled"), _metrics(tmp_path / "eager")
    assert [m["loss"] for m in compiled] == pytest.approx([m["loss"] for m in eager], abs=1e-4)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "compiled"))
    assert not any(k.startswith("_orig_mod.") for k in state["model"])  # the plain model's weights are saved


def test_on_cpu_the_trainer_leaves_the_loader_workers_their_cores(monkeypatch):
    import torch

    from clipmodel.train.trainer import _share_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
        _share_cores(workers=2)
        assert torch.get_num_threads() == 6
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on these 8 cores: 4 each, less 2 workers
        _share_cores(workers=2)
        assert torch.get_num_threads() == 2
        _share_cores(workers=9)
        assert torch.get_num_threads() == 1  # never none
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
        _share_cores(workers=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
