"""Zero-shot on shards whose samples carry a class field: the same report as the same images in a labelled folder,
and a clear error for a sample without a class."""

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipmodel.eval.config import EvalConfig
from clipmodel.eval.labelled_shards import evaluate_zeroshot_shards, is_shard_set
from clipmodel.eval.reports import evaluate_zeroshot
from clipmodel.eval.zeroshot import read_labels
from clipmodel.factory import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def write_wds(folder: Path, rows: list[dict], per_shard: int, field: str = "label") -> Path:
    """img2dataset's webdataset output, written by webdataset's own TarWriter: NNNNN.tar of .png, .txt and .json."""
    import webdataset

    folder.mkdir(parents=True)
    for start in range(0, len(rows), per_shard):
        with webdataset.TarWriter(str(folder / f"{start // per_shard:05d}.tar")) as sink:
            for i, row in enumerate(rows[start : start + per_shard], start):
                meta = {"key": f"{i:09d}", "caption": f"a photo of a {row['label']}", field: row["label"]}
                sink.write({"__key__": f"{i:09d}", "png": Path(row["path"]).read_bytes(), "txt": meta["caption"],
                            "json": json.dumps(meta).encode()})  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def eval_rows(web_dir: Path) -> list[dict]:
    rows = pq.read_table(web_dir / "eval" / "labels.parquet", columns=["path", "label"]).to_pylist()
    return [{"path": str(web_dir / "eval" / r["path"]), "label": r["label"]} for r in rows]


@pytest.fixture(scope="module")
def model(micro_model: Path):
    """The micro CLIP with seeded random weights: what is compared is the reading, not the accuracy."""
    import torch

    torch.manual_seed(0)
    return create_model(micro_model).eval()


def test_shards_give_the_report_of_the_same_images_in_a_folder(web_dir, eval_rows, model, tmp_path) -> None:
    shards = write_wds(tmp_path / "wds", eval_rows, per_shard=16)  # 36 images in 3 shards
    cfg = EvalConfig(templates=("a photo of a {}.", "a {} shape."), batch_size=10, workers=0)
    got = evaluate_zeroshot_shards(model, 32, shards, "label", cfg)
    files = read_labels(web_dir / "eval")
    want = evaluate_zeroshot(model, 32, files, cfg)
    assert got["images"] == 36 and got["classes"] == 36
    assert (got["top1"], got["top5"], got["per_class"]) == (want["top1"], want["top5"], want["per_class"])
    assert got["per_template"] == want["per_template"] and got["mean_per_class"] == want["mean_per_class"]
    # Classes in name order, whatever order the shards hold them in.
    named = evaluate_zeroshot_shards(model, 32, shards, "label", cfg, classnames=files.classnames)
    assert named["confusion"] == want["confusion"]


def test_a_sample_without_a_class_stops_the_evaluation(eval_rows, model, tmp_path) -> None:
    shards = write_wds(tmp_path / "wds", eval_rows[:4], per_shard=4, field="class")
    cfg = EvalConfig(templates=("{}",), workers=0)
    with pytest.raises(ValueError, match=r"sample 000000000 has no class name in its JSON field 'label'"):
        evaluate_zeroshot_shards(model, 32, shards, "label", cfg)
    with pytest.raises(ValueError, match="not among the given class names"):
        evaluate_zeroshot_shards(model, 32, shards, "class", cfg, classnames=["blue star"])


def test_which_paths_are_shard_sets(shapes_dataset: Path, web_dir: Path, tmp_path: Path) -> None:
    assert is_shard_set(shapes_dataset)  # ours: manifest.json
    assert is_shard_set(shapes_dataset / "shards" / "00000.tar")
    assert not is_shard_set(web_dir / "eval")  # labels.parquet
    (tmp_path / "tree" / "red_circle").mkdir(parents=True)
    assert not is_shard_set(tmp_path / "tree")
    (tmp_path / "i2d").mkdir()
    (tmp_path / "i2d" / "00000.tar").write_bytes(io.BytesIO().getvalue())
    assert is_shard_set(tmp_path / "i2d")
