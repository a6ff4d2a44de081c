"""`wit eval`: every evaluation end to end with a tiny random model into one JSON file, and one-line errors."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from clipmodel.embed import embeddings as emb
from synthweb.spec import SHIFTS
from synthweb.truth import EVAL_DIR, EVAL_SHIFT_DIR, LABELS_FILE
from wit import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(web: Path, out: Path, sets: list[Path], classes: int) -> Path:
    """An image-folder tree of the first `classes` classes, one image of each from each of `sets`."""
    for folder in sets:
        rows = pq.read_table(folder / LABELS_FILE, columns=["path", "label"]).to_pylist()
        for row in sorted(rows, key=lambda r: r["label"])[:classes]:
            target = out / row["label"].replace(" ", "_") / f"{folder.name}-{row['path']}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / row["path"], target)
    return out


def _embeddings(root: Path, n: int = 12) -> Path:
    """Image = text for every pair; the last two pairs repeat the first two's captions and vectors."""
    x = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1).numpy()
    x[10:] = x[:2]
    emb.write_shard(root, 0, [f"k{i}" for i in range(n)], [f"caption {i % 10}" for i in range(n)], [None] * n, x, x)
    emb.write_info(root, {"dim": 8, "complete": True, "shards": [{"index": 0, "rows": n}]})
    return root


def test_every_evaluation_into_one_json(web_dir: Path, tiny_weights: Path, tmp_path: Path, capsys) -> None:
    shifted = [web_dir / EVAL_SHIFT_DIR / s for s in SHIFTS]
    train = _tree(web_dir, tmp_path / "train", [web_dir / EVAL_DIR, *shifted[:2]], classes=6)
    test = _tree(web_dir, tmp_path / "test", shifted[2:], classes=6)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    out = tmp_path / "results" / "eval.json"
    argv = ["eval", "--model", str(tiny_weights), "--arch", "tiny", "--web", str(web_dir), "--zeroshot", str(test),
            "--templates", str(templates), "--retrieval", str(_embeddings(tmp_path / "emb")),
            "--linear-probe", str(train), str(test), "--out", str(out), "--device", "cpu", "--workers", "0",
            "--batch-size", "64"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["model"]["weights_sha256"] and results["templates"] == {"set": str(templates), "count": 2}

    eval_set = results["zeroshot"][str(web_dir / EVAL_DIR)]
    assert eval_set["images"] == 36 and set(eval_set["by_split"]) == {"train", "held_out"}
    assert set(eval_set["per_template"]) == {"a photo of a {}.", "a drawing of a {}."}
    tree = results["zeroshot"][str(test)]
    assert (tree["images"], tree["classes"]) == (6, 6) and "by_split" not in tree

    robustness = results["robustness"][str(web_dir / EVAL_DIR)]
    assert robustness["reference"] == "eval" and list(robustness["sets"]) == ["eval", *sorted(SHIFTS)]
    assert all("drop_top1" in robustness["sets"][s] for s in SHIFTS)

    retrieval = results["retrieval"]
    assert (retrieval["pairs"], retrieval["distinct_captions"]) == (12, 10)
    assert retrieval["image_to_text"]["R@1"] == 1.0 and retrieval["text_to_image"]["R@1"] == 1.0

    probe = results["linear_probe"]
    assert (probe["train_images"], probe["test_images"], probe["classes"]) == (18, 6, 6)
    assert 0 <= probe["top1"] <= 1 and probe["C"] > 0

    for heading in ("zero-shot", "split held_out", "robustness against", "  sketch", "image->text", "linear probe"):
        assert heading in printed
    assert f"results: {out}" in printed


def test_explicit_shift_folders_and_retrieval_on_a_dataset(
    web_dir: Path, tiny_weights: Path, make_shapes_dataset, tmp_path: Path, capsys
) -> None:
    dataset = make_shapes_dataset(tmp_path / "shapes", samples=16, per_shard=8, side=48)
    out = tmp_path / "eval.json"
    base, sketch = web_dir / EVAL_DIR, web_dir / EVAL_SHIFT_DIR / "sketch"
    argv = ["eval", "--model", str(tiny_weights), "--arch", "tiny", "--zeroshot", str(base), "--shifts", str(sketch),
            "--retrieval", str(dataset), "--out", str(out), "--device", "cpu", "--workers", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert list(results["zeroshot"]) == [str(base)]  # evaluated once, as the reference
    assert list(results["robustness"][str(base)]["sets"]) == ["eval", "sketch"]
    assert results["retrieval"]["pairs"] == 16 and results["retrieval"]["image_to_text"]["queries"] == 16


def test_zeroshot_on_shards_with_a_class_field(web_dir: Path, micro_model: Path, tmp_path: Path, capsys) -> None:
    import webdataset

    from clipmodel.factory import create_model

    torch.manual_seed(0)
    torch.save(create_model(micro_model).state_dict(), tmp_path / "micro.pt")

    rows = pq.read_table(web_dir / EVAL_DIR / LABELS_FILE, columns=["path", "label"]).to_pylist()[:6]
    shards = tmp_path / "wds"  # img2dataset's layout, by webdataset's writer: the class in each sample's JSON
    shards.mkdir()
    with webdataset.TarWriter(str(shards / "00000.tar")) as sink:
        for i, r in enumerate(rows):
            meta = json.dumps({"caption": r["label"], "label": r["label"]}).encode()
            sink.write({"__key__": f"{i:09d}", "png": (web_dir / EVAL_DIR / r["path"]).read_bytes(), "json": meta})
    out = tmp_path / "eval.json"
    base = ["eval", "--model", str(tmp_path / "micro.pt"), "--arch", str(micro_model), "--zeroshot", str(shards),
            "--templates"]  # fmt: skip
    argv = [*base, str(_one_template(tmp_path)), "--label-field", "label", "--out", str(out), "--device", "cpu",
            "--workers", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())["zeroshot"][str(shards)]
    assert (report["images"], report["classes"], report["label_field"]) == (6, 6, "label")
    assert f"zero-shot {shards} (6 images, 6 classes, 1 template)" in capsys.readouterr().out
    assert cli.main([*base, "default"]) == 2  # no --label-field
    assert "give --label-field" in capsys.readouterr().err


def _one_template(tmp_path: Path) -> Path:
    (tmp_path / "one.txt").write_text("a photo of a {}.\n")
    return tmp_path / "one.txt"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to evaluate"),
        (["--zeroshot", "x"], "--model is required"),
        (["--shifts", "x"], "--shifts needs a --zeroshot"),
        (["--model", "M", "--zeroshot", "DIR", "--templates", "nope.txt"], "templates 'nope.txt'"),
        (["--model", "/no/such/model.pt", "--zeroshot", "DIR"], "no model at /no/such/model.pt"),
        (["--model", "M", "--web", "/no/such/web"], "is it a synthetic web"),
        (["--retrieval", "/no/such/emb"], "--model is required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tiny_weights: Path, tmp_path: Path, capsys) -> None:
    argv = [str(tiny_weights) if a == "M" else str(tmp_path) if a == "DIR" else a for a in argv]
    if "--model" in argv and "/no/such/model.pt" not in argv:
        argv += ["--arch", "tiny", "--device", "cpu"]
    assert cli.main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit eval: error: ") and "\n" not in err and message in err


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--zeroshot", "--web", "--templates", "--retrieval", "--linear-probe", "--out"))
