"""Zero-shot classification: reading a labelled folder, prompt-averaged class embeddings, top-k accuracy."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipmodel.eval.zeroshot import LabelledSet, accuracy, classifier, read_labelled_folder
from clipmodel.factory import create_model

CLASSES = ("red circle", "blue square", "green star", "orange cross", "purple hexagon", "yellow triangle")
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def stub_tokenize(prompts: list[str], context_length: int) -> torch.Tensor:
    """Row = (class index, template index): enough for the stub model to know what each prompt says."""
    which = {tpl.format(name): [c, t] for t, tpl in enumerate(TEMPLATES) for c, name in enumerate(CLASSES)}
    return torch.tensor([which[p] for p in prompts])


class StubClip(nn.Module):
    """Text: a class's one-hot plus a template-dependent offset that averaging must cancel. Image: pixel [0, 0, 0]
    names the class it looks like, pixel [0, 0, 1] a runner-up."""

    def __init__(self) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(77, 1))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        emb = F.one_hot(text[:, 0], len(CLASSES)).float() * 2  # (N, C)
        offset = torch.where(text[:, 1:2] == 0, 1.0, -1.0) * F.one_hot(torch.full_like(text[:, 0], 5), len(CLASSES))
        return emb + offset  # the two templates' offsets cancel in the mean

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        best, second = images[:, 0, 0, 0].long(), images[:, 0, 0, 1].long()
        return F.one_hot(best, len(CLASSES)).float() + 0.5 * F.one_hot(second, len(CLASSES)).float()


def test_class_embeddings_average_the_prompts_and_are_unit_length() -> None:
    weights = classifier(StubClip(), CLASSES, TEMPLATES, tokenizer=stub_tokenize)  # (C, C) here, as (E, C)
    assert weights.shape == (len(CLASSES), len(CLASSES))
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(len(CLASSES)))
    # After averaging, each class points only at its own axis: the per-template offsets cancelled.
    torch.testing.assert_close(weights, torch.eye(len(CLASSES)), atol=0.2, rtol=0)
    assert weights.diagonal().min() > 0.95


def test_top1_and_top5_count_the_right_images() -> None:
    images = torch.zeros(4, 3, 2, 2)
    # (looks like, runner-up): right; wrong but runner-up right; wrong twice over; right.
    for i, (best, second) in enumerate([(0, 1), (2, 1), (3, 4), (5, 0)]):
        images[i, 0, 0, 0], images[i, 0, 0, 1] = best, second
    labelled = LabelledSet(images, torch.tensor([0, 1, 2, 5]), CLASSES)
    result = accuracy(StubClip(), labelled, TEMPLATES, batch_size=3, topk=(1, 2, 5), tokenizer=stub_tokenize)
    assert result == {"top1": 0.5, "top2": 0.75, "top5": 1.0}


def test_reads_the_synthetic_web_eval_set(web_dir: Path) -> None:
    labelled = read_labelled_folder(web_dir / "eval", resolution=32)
    assert len(labelled.classnames) == 36 and labelled.images.shape == (36, 3, 32, 32)
    assert sorted(labelled.targets.tolist()) == list(range(36))  # one image per class
    assert labelled.images.mean().abs() < 2  # normalised with CLIP's mean and std, not raw 0..255


def test_untrained_tiny_model_is_near_chance_and_in_range(web_dir: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    labelled = read_labelled_folder(web_dir / "eval", resolution=model.config.vision.image_size)
    result = accuracy(model, labelled)
    assert set(result) == {"top1", "top5"} and 0 <= result["top1"] <= result["top5"] <= 1


def test_missing_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.parquet"):
        read_labelled_folder(tmp_path, 32)
