"""The training config: dataset specs with weights, layering, eager validation, what a resume may change."""

import json
from pathlib import Path

import pytest

from clipmodel.train.config import (
    DataSource,
    TrainConfig,
    TrainError,
    layered,
    load_config_file,
    parse_sources,
    resume_config,
)


def test_dataset_specs_with_and_without_weights() -> None:
    assert DataSource.parse("/data/a") == DataSource("/data/a")
    assert DataSource.parse("/data/a:0.7") == DataSource("/data/a", 0.7)
    assert DataSource.parse("s3://bucket/wit") == DataSource("s3://bucket/wit")  # the colon of a URL stays
    assert DataSource.parse("s3://bucket/wit:2") == DataSource("s3://bucket/wit", 2.0)
    with pytest.raises(TrainError, match="positive"):
        DataSource.parse("/data/a:0")


def test_weights_go_to_the_loader_only_when_some_dataset_has_one() -> None:
    assert TrainConfig("tiny", parse_sources(["/a", "/b"])).weights is None
    assert TrainConfig("tiny", parse_sources(["/a:0.7", "/b:0.3"])).weights == [0.7, 0.3]
    assert TrainConfig("tiny", parse_sources(["/a:3", "/b"])).weights == [3.0, 1.0]


def test_layers_later_win_and_none_means_not_given(tmp_path: Path) -> None:
    file = tmp_path / "train.json"
    file.write_text(json.dumps({"batch_size": 32, "lr": 1e-3, "data": ["/x"]}))
    cfg = layered(load_config_file(file), {"model": "tiny", "lr": 2e-3, "steps": None})
    assert (cfg.batch_size, cfg.lr, cfg.steps, cfg.data) == (32, 2e-3, 1000, (DataSource("/x"),))


def test_round_trip_through_json_primitives() -> None:
    cfg = TrainConfig("tiny", parse_sources(["/a:0.5", "/b:0.5"]), templates=("a {}.", "art of a {}."))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 10, "accum_freq": 4}, "not a multiple of accum_freq"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"local_loss": True, "gather_with_grad": False}, "local_loss needs gather_with_grad"),
        ({"templates": ("no slot",)}, "template"),
        ({"data": ()}, "no training data"),
        ({"warmup": -1}, "warmup must be a non-negative integer"),
    ],
)
def test_bad_settings_fail_eagerly(change: dict, message: str) -> None:
    with pytest.raises(TrainError, match=message):
        TrainConfig(**({"model": "tiny", "data": ["/a"]} | change))


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="not found"):
        load_config_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TrainError, match="not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text('{"bach_size": 3}')
    with pytest.raises(TrainError, match="unknown keys.*bach_size"):
        load_config_file(tmp_path / "typo.json")


def test_resume_may_lengthen_the_run_but_not_change_what_it_computes() -> None:
    saved = TrainConfig("tiny", parse_sources(["/a"]), steps=100, lr=1e-3).to_dict()
    cfg = resume_config(saved, {"steps": 200, "keep": 5, "lr": 1e-3, "data": parse_sources(["/a"])})
    assert (cfg.steps, cfg.keep, cfg.lr) == (200, 5, 1e-3)
    with pytest.raises(TrainError, match=r"lr=0.002 \(checkpoint: 0.001\)"):
        resume_config(saved, {"lr": 2e-3})
    with pytest.raises(TrainError, match="data=/b"):
        resume_config(saved, {"data": parse_sources(["/b"])})
