"""A training run's metrics.jsonl as the report's run stats: columns by kind, torn last lines, clear errors, and
the file a real (micro) training run writes."""

import json
from pathlib import Path

import pytest
from stats_fixture import write_metrics

from pipeline.report.run_stats import CONFIG_FILE, RUN_FORMAT, run_stats


def test_columns_follow_the_metrics_lines(tmp_path: Path) -> None:
    write_metrics(tmp_path, steps=20, eval_every=5)
    stats = run_stats(tmp_path)
    assert (stats["format"], stats["version"], stats["run"]) == (RUN_FORMAT, 1, str(tmp_path))
    assert stats["config"] == {"config": {"model": "tiny", "steps": 20}, "world_size": 1}
    train = stats["train"]
    assert set(train) == {"step", "samples", "loss", "lr", "temperature", "samples_per_s"}
    assert train["step"] == list(range(1, 21)) and train["samples"][-1] == 320
    assert train["loss"][0] == pytest.approx(3.9) and train["loss"][-1] == pytest.approx(2.0)
    assert train["lr"][:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and train["temperature"] == [0.07] * 20
    assert train["samples_per_s"][0] is None and train["samples_per_s"][1] == 102.0  # the first has no rate yet
    assert stats["eval"] == {
        "step": [5, 10, 15, 20],
        "samples": [80, 160, 240, 320],
        "top1": [0.05, 0.1, 0.15, 0.2],
        "top5": [0.125, 0.25, 0.375, 0.5],
    }
    assert stats["dataset"] is None and stats["rows"] is None and "runs" not in stats  # the config names no data
    json.dumps(stats, allow_nan=False)  # plain JSON, as stats.json must be


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    write_metrics(tmp_path, steps=3, torn=True)
    assert run_stats(tmp_path)["train"]["step"] == [1, 2, 3]


def test_no_config_is_none_and_non_numbers_are_gaps(tmp_path: Path) -> None:
    lines = [
        {"kind": "train", "step": 1, "samples": 8, "loss": 2.5, "lr": 0.1, "temperature": 0.07},
        {"kind": "train", "step": 2, "samples": 16, "loss": None, "lr": "x", "temperature": 0.07, "samples_per_s": 9},
        {"kind": "other", "step": 2},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))
    stats = run_stats(tmp_path)
    assert stats["config"] is None and stats["eval"] == {"step": [], "samples": [], "top1": [], "top5": []}
    assert stats["train"]["loss"] == [2.5, None] and stats["train"]["lr"] == [0.1, None]
    assert stats["train"]["samples_per_s"] == [None, 9]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"no metrics\.jsonl, so not a training run folder"),
        ("", r"metrics\.jsonl: no metrics lines"),
        ('not json\n{"kind": "train", "step": 1, "loss": 1}\n', r"metrics\.jsonl:1: not a JSON line"),
        ('[1, 2]\n{"kind": "train", "step": 1, "loss": 1}\n', r"metrics\.jsonl:1: not a metrics line"),
        ('{"kind": "eval", "step": "3"}\n', r"metrics\.jsonl:1: metrics line has no integer step"),
        ('{"kind": "train", "step": 1, "loss": "high"}\n', r"metrics\.jsonl:1: train line has a non-numeric loss"),
    ],
)
def test_bad_folders_raise_one_clear_line(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        run_stats(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_malformed_config_is_an_error(tmp_path: Path) -> None:
    write_metrics(tmp_path, steps=2)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not a JSON run config"):
        run_stats(tmp_path)


@pytest.mark.slow  # trains a micro CLIP for 6 steps and evaluates it zero-shot (~5-10 s, plus the shared web)
@pytest.mark.usefixtures("one_thread")
def test_the_metrics_of_a_real_training_run(make_shapes_dataset, micro_model: Path, web_dir: Path, tmp_path) -> None:
    from clipmodel.train.trainer import CONFIG_FILE as TRAIN_CONFIG_FILE
    from clipmodel.train.trainer import train
    from pipeline.report.render import render_report

    assert CONFIG_FILE == TRAIN_CONFIG_FILE
    data = make_shapes_dataset(tmp_path / "data", samples=64, per_shard=64, side=32)
    given = {"model": str(micro_model), "data": [str(data)], "steps": 6, "batch_size": 8, "warmup": 2}
    given |= {"lr": 1e-3, "log_every": 1, "save_every": 6, "workers": 0, "eval_dir": str(web_dir / "eval")}
    summary = train(given, tmp_path / "run")

    stats = run_stats(tmp_path / "run")
    assert (stats["dataset"], stats["rows"]) == ("data", 64)  # the dataset folder's name and its rows
    train_cols = stats["train"]
    assert train_cols["step"] == [1, 2, 3, 4, 5, 6] and train_cols["samples"] == [8, 16, 24, 32, 40, 48]
    assert all(isinstance(v, float) for v in train_cols["loss"] + train_cols["temperature"])
    assert train_cols["lr"][1] == pytest.approx(1e-3)
    assert stats["eval"]["step"] == [6]  # evaluated once, at the end
    assert stats["eval"]["top1"][-1] == summary.eval["top1"] and stats["eval"]["top5"][-1] == summary.eval["top5"]
    assert stats["config"]["config"]["steps"] == 6 and stats["config"]["model_config"]["embed_dim"] == 32

    html = render_report(stats, tmp_path / "report").read_text()
    assert "fig-run-loss" in html and "fig-run-zeroshot" in html and f"{summary.eval['top1']:.1%}" in html


def test_several_runs_give_the_scaling_charts(tmp_path: Path) -> None:
    from pipeline.report.render import render_report

    runs = []
    for name, rows, scale in (("curated", 1000, 1.0), ("curated", 3000, 2.0), ("raw", 3000, 1.5)):
        run = tmp_path / f"{name}-{rows}"
        write_metrics(run, steps=20, eval_every=5)
        shard = f"/data/{name}/shards/00001.tar"  # the dataset is the folder above shards/
        config = {
            "config": {"steps": 20},
            "datasets": [{"path": shard, "rows": rows - 256}, {"path": shard, "rows": 256}],
        }
        (run / CONFIG_FILE).write_text(json.dumps(config))
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            if line["kind"] == "eval":
                line["top1"] *= scale
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        runs.append(run)
    stats = run_stats(runs[0], runs[1:])
    assert [(r["run"], r["dataset"], r["rows"]) for r in stats["runs"]] == [
        (str(runs[0]), "curated", 1000),
        (str(runs[1]), "curated", 3000),
        (str(runs[2]), "raw", 3000),
    ]
    assert stats["runs"][1]["eval"]["top1"][-1] == pytest.approx(0.4)
    html = render_report(stats, tmp_path / "report").read_text()
    assert "fig-run-scaling-seen" in html and "fig-run-scaling-size" in html and 'id="scaling"' in html
    assert "40.0%" in html and "curated, 3,000 pairs" in html
    # The table names runs by what tells them apart (the full path on hover); raw's lines are dashed.
    assert f'<code title="{runs[2]}">raw-3000</code>' in html
    assert "stroke-dasharray" in html


def test_short_names_keep_what_differs() -> None:
    from pipeline.report.scaling import short_names

    assert short_names(["/w/a/web32/x-curated/train", "/w/a/web64/x-raw/train"]) == ["web32/x-curated", "web64/x-raw"]
    assert short_names(["/w/one/train", "/w/one/train/more"]) == ["train", "train/more"]
    assert short_names(["/only/run"]) == ["run"]
