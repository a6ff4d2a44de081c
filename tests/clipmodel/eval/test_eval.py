"""Zero-shot reports and robustness: every number on a hand-built case, the readers, the synthetic web's shifts."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipmodel.eval.config import EvalConfig
from clipmodel.eval.reports import (
    confusion_matrix,
    evaluate_shifts,
    evaluate_zeroshot,
    robustness_report,
    zeroshot_report,
)
from clipmodel.eval.zeroshot import class_name, read_labels
from clipmodel.factory import create_model
from clipmodel.templates import DEFAULT, IMAGENET80, load_templates
from synthweb.spec import SHIFTS
from synthweb.truth import EVAL_DIR, EVAL_SHIFT_DIR

CLASSES = ("cat", "dog", "bird")
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


pytestmark = pytest.mark.usefixtures("one_thread")


def hand_built() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Template A points class c at axis c; template B at axis c+1 (wrong alone); the ensemble at both.

    Image (target): ensemble / A / B prediction
      (3, 1, 0) cat:  cat / cat / bird
      (0, 1, 3) dog:  dog / bird / dog
      (0, 1, 2) bird: dog (bird second) / bird / dog
      (.5, 0, 1) bird: bird / bird / dog
    """
    eye = torch.eye(3)
    prompts = torch.stack([eye, eye.roll(1, dims=1)], dim=1)  # (C, T, E): [c, 0] = e_c, [c, 1] = e_(c+1)
    features = F.normalize(torch.tensor([[3, 1, 0], [0, 1, 3], [0, 1, 2], [0.5, 0, 1]]), dim=-1)  # (N, E)
    return features, prompts, torch.tensor([0, 1, 2, 2])


def test_zeroshot_report_on_a_hand_built_case() -> None:
    features, prompts, targets = hand_built()
    split = ("train", "train", "held_out", "held_out")
    r = zeroshot_report(features, prompts, targets, CLASSES, TEMPLATES, split, topk=(1, 2, 5))
    assert (r["images"], r["classes"], r["templates"]) == (4, 3, 2)
    assert (r["top1"], r["top2"], r["top5"]) == (0.75, 1.0, 1.0)  # top5 of a 3-way task: every image
    assert r["per_class"] == {"cat": 1.0, "dog": 1.0, "bird": 0.5}
    assert r["mean_per_class"] == pytest.approx(2.5 / 3)
    assert r["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]  # row: true class, column: predicted
    assert r["per_template"] == {"a photo of a {}.": 0.75, "a drawing of a {}.": 0.25}
    assert r["by_split"] == {
        "held_out": {"images": 2, "top1": 0.5, "top2": 1.0, "top5": 1.0},
        "train": {"images": 2, "top1": 1.0, "top2": 1.0, "top5": 1.0},
    }


def test_report_without_split_and_a_class_without_images() -> None:
    features, prompts, targets = hand_built()
    r = zeroshot_report(features[:2], prompts, targets[:2], CLASSES, TEMPLATES)
    assert "by_split" not in r and r["per_class"]["bird"] is None and r["mean_per_class"] == 1.0


def test_confusion_matrix_counts() -> None:
    m = confusion_matrix(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 2, 1, 1]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_robustness_report_drops() -> None:
    reports = {
        "eval": {"images": 4, "top1": 0.75, "top5": 1.0, "by_split": {"train": {"top1": 1.0}}},
        "sketch": {"images": 4, "top1": 0.25, "top5": 0.5},
        "texture": {"images": 4, "top1": 0.5, "top5": 1.0},
    }
    r = robustness_report(reports, "eval")
    assert r["reference"] == "eval"
    assert r["sets"]["eval"] == {"images": 4, "top1": 0.75, "top5": 1.0, "by_split_top1": {"train": 1.0}}
    assert r["sets"]["sketch"] == {
        "images": 4, "top1": 0.25, "top5": 0.5, "drop_top1": 0.5, "drop_top5": 0.5, "relative_top1": 1 / 3,
    }  # fmt: skip
    assert r["sets"]["texture"]["drop_top1"] == 0.25
    assert r["mean_shifted_top1"] == 0.375 and r["mean_drop_top1"] == 0.375


# ---- through a model: a stub whose answers are known, and a tiny random CLIP ------------------------------------


def colour_tokenize(prompts: list[str], context_length: int) -> torch.Tensor:
    """A prompt's token row is the index of the colour it names: enough for the stub's text tower."""
    return torch.tensor([[["red", "green", "blue"].index(w) for w in p.split() if w in ("red", "green", "blue")]
                         for p in prompts])  # fmt: skip


class ColourClip(nn.Module):
    """Image: its mean normalised (R, G, B). Text: the one-hot of the colour the prompt names, in (R, G, B)."""

    def __init__(self) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(77, 1))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.one_hot(text[:, 0], 3).float()  # (N, 3)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))  # (B, 3)


def _solid(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), rgb).save(path)


def test_image_folder_tree_through_a_stub_model(tmp_path: Path) -> None:
    red, green, blue = (230, 10, 10), (10, 230, 10), (10, 10, 230)
    _solid(tmp_path / "red_thing" / "a.png", red)
    _solid(tmp_path / "red_thing" / "sub" / "b.jpg", red)  # nested folders count, as torchvision's
    _solid(tmp_path / "green-thing" / "c.png", green)
    _solid(tmp_path / "blue_thing" / "d.png", blue)
    _solid(tmp_path / "blue_thing" / "e.png", green)  # a green picture filed as blue: wrong, and knowably so
    (tmp_path / "blue_thing" / "notes.txt").write_text("not an image")
    files = read_labels(tmp_path)
    assert files.classnames == ("blue thing", "green thing", "red thing")  # folder-name order
    assert files.targets == (0, 0, 1, 2, 2) and files.split is None
    r = evaluate_zeroshot(ColourClip(), 16, files, EvalConfig(batch_size=2, workers=0), tokenizer=colour_tokenize)
    assert r["top1"] == 0.8 and r["per_class"] == {"blue thing": 0.5, "green thing": 1.0, "red thing": 1.0}
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]


def test_class_names_of_folders() -> None:
    assert class_name("golden_retriever") == class_name("golden-retriever") == "golden retriever"
    assert class_name("n01_  tench") == "n01 tench"


def test_labels_parquet_split_and_shifted_copies_share_the_classes(web_dir: Path) -> None:
    base = read_labels(web_dir / EVAL_DIR)
    assert len(base) == 36 and set(base.split) == {"train", "held_out"}
    sketch = read_labels(web_dir / EVAL_SHIFT_DIR / "sketch", base.classnames)
    assert sketch.classnames == base.classnames and sorted(sketch.targets) == list(range(36))
    with pytest.raises(ValueError, match="not among the reference classes"):
        read_labels(web_dir / EVAL_DIR, base.classnames[:5])


def test_robustness_on_the_synthetic_web_with_a_tiny_random_model(web_dir: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    sets = {"eval": web_dir / EVAL_DIR} | {s: web_dir / EVAL_SHIFT_DIR / s for s in SHIFTS}
    out = evaluate_shifts(model, model.config.vision.image_size, sets, "eval", EvalConfig(batch_size=64, workers=0))
    rob = out["robustness"]
    assert list(rob["sets"]) == ["eval", *SHIFTS]  # one entry per shift, beside the reference
    base = out["reports"]["eval"]
    assert base["images"] == 36 and sum(s["images"] for s in base["by_split"].values()) == 36
    for shift in SHIFTS:
        entry = rob["sets"][shift]
        assert entry["images"] == 36 and 0 <= entry["top1"] <= entry["top5"] <= 1
        assert math.isclose(entry["drop_top1"], base["top1"] - entry["top1"])
    assert np.asarray(base["confusion"]).sum() == 36


def test_templates() -> None:
    assert load_templates("default") == DEFAULT == ("a photo of a {}.",)
    assert len(IMAGENET80) == len(set(IMAGENET80)) == 80 and all(t.count("{}") == 1 for t in IMAGENET80)
    assert load_templates("imagenet80") is IMAGENET80


def test_template_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("# mine\na {} seen from far.\n\nitap of a {}.\n")
    assert load_templates(str(path)) == ("a {} seen from far.", "itap of a {}.")
    path.write_text("no slot here\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(str(path))
    with pytest.raises(FileNotFoundError, match="imagenet80"):
        load_templates(str(tmp_path / "missing.txt"))
