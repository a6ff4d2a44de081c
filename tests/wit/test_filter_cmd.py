"""`wit filter` through the command line: help, a run, and one-line errors."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from clipmodel.embed import embeddings as emb
from wit import cli


@pytest.fixture
def small(make_shapes_dataset, tmp_path: Path) -> tuple[Path, Path]:
    """8 shapes samples and embeddings where the image-caption cosine is 0.2 for even keys and 0.6 for odd ones."""
    dataset = make_shapes_dataset(tmp_path / "ds", samples=8, per_shard=8)
    keys = [f"shape{i:05d}" for i in range(8)]
    image = np.zeros((8, 4), np.float32)
    image[:, 0] = 1.0
    cosine = np.where(np.arange(8) % 2, 0.6, 0.2)
    text = np.stack([cosine, np.sqrt(1 - cosine**2), np.zeros(8), np.zeros(8)], axis=1)
    emb.write_shard(tmp_path / "emb", 0, keys, [None] * 8, [None] * 8, image, text)
    sha = hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()
    info = {"dataset_manifest_sha256": sha, "dim": 4, "complete": True, "shards": [{"index": 0, "rows": 8}]}
    emb.write_info(tmp_path / "emb", info)
    return dataset, tmp_path / "emb"


def test_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["filter", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: wit filter" in out and "--semdedup-eps" in out and "--top-fraction" in out


def test_filter_command_runs_the_job(small: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, embeddings = small
    out = tmp_path / "out"
    argv = ["filter", str(dataset), "--embeddings", str(embeddings), "--out", str(out), "--min-clip-score", "0.4"]
    assert cli.main([*argv, "--runner=FnApiRunner"]) == 0
    assert "kept 4 of 8 samples in 1 shards; rejected: low_clip_score 4" in capsys.readouterr().out
    assert cli.main(["shards", "verify", str(out)]) == 0


def test_errors_are_one_line(small: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    dataset, _ = small
    argv = ["filter", str(dataset), "--embeddings", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wit filter: error: ") and "not an embeddings folder" in err[0]
    assert cli.main(["filter", str(tmp_path / "no-dataset"), "--embeddings", "e", "--out", "o"]) == 2
    assert "not a wit-builder dataset" in capsys.readouterr().err
