"""`wit train`: runs, resumes to a longer total, mixes weighted datasets, layers a config file; one-line errors."""

import json
from pathlib import Path

import pytest

from clipmodel.train import checkpointing as ckpt
from wit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def micro(micro_model: Path) -> str:
    return str(micro_model)


def _args(data: Path, model: str, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", model, "--out", str(run), "--batch-size", "8", "--workers", "0",
            "--warmup", "1", "--log-every", "1", *extra]  # fmt: skip


def test_run_then_resume_to_a_longer_total(shapes_dataset: Path, micro: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_args(shapes_dataset, micro, run, "--steps", "2")) == 0
    assert "trained steps 0..2 (16 samples)" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0  # the rest comes from the checkpoint
    assert "trained steps 2..4 (32 samples)" in capsys.readouterr().out
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("wit train: error: ") and "\n" not in err
        return err

    assert "already at step 4" in error(["train", "--out", str(run), "--resume", "--steps", "4"])
    assert "not the architecture" in error(["train", "--out", str(run), "--resume", "--model", "tiny", "--steps", "6"])
    assert "lr=0.1 (checkpoint: 0.0005)" in error(
        ["train", "--out", str(run), "--resume", "--lr", "0.1", "--steps", "6"]
    )
    assert "already holds a run" in error(_args(shapes_dataset, micro, run, "--steps", "6"))


def test_weighted_datasets_train_in_resampled_mode(
    make_shapes_dataset, micro: str, tmp_path: Path, shapes_dataset: Path
) -> None:
    other = make_shapes_dataset(tmp_path / "other", samples=64, per_shard=32, seed=1)
    run = tmp_path / "run"
    argv = _args(shapes_dataset, micro, run, "--steps", "2")
    argv[argv.index("--data") + 1 : argv.index("--data") + 2] = [f"{shapes_dataset}:0.7", f"{other}:0.3"]
    assert main(argv) == 0
    written = json.loads((run / "config.json").read_text())
    assert [d["weight"] for d in written["config"]["data"]] == [0.7, 0.3]
    assert written["data_config"]["resampled"] and written["data_config"]["weights"] == [0.7, 0.3]
    assert all(len(d["manifest_sha256"]) == 64 for d in written["datasets"])


def test_config_file_is_layered_under_the_flags(shapes_dataset: Path, micro: str, tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": [str(shapes_dataset)], "model": micro, "steps": 1, "lr": 0.01, "seed": 5}))
    run = tmp_path / "run"
    assert (
        main(
            ["train", "--config", str(config), "--out", str(run), "--batch-size", "8", "--workers", "0", "--lr", "0.02"]
        )
        == 0
    )  # noqa: E501
    saved = json.loads((run / "config.json").read_text())["config"]
    assert (saved["steps"], saved["lr"], saved["seed"], saved["batch_size"]) == (1, 0.02, 5, 8)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'"),
        (["--data", "/no/such/dataset"], "dataset /no/such/dataset not found"),
        (["--resume"], "nothing to resume"),
        (["--batch-size", "9", "--accum-freq", "2"], "not a multiple of accum_freq"),
        (["--eval-dir", "/no/such/eval"], "--eval-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, shapes_dataset, micro, tmp_path, capsys) -> None:
    base = {"--data": str(shapes_dataset), "--model": micro, "--out": str(tmp_path / "run"), "--workers": "0"}
    args = ["train"]
    for flag, value in base.items():
        if flag not in argv:
            args += [flag, value]
    assert main(args + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit train: error: ") and "\n" not in err and message in err


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--data", "--resume", "--accum-freq", "--precision", "--eval-dir", "--keep"))
