"""Zero-shot classification: class names through prompt templates into a text classifier, top-k accuracy.

As in the CLIP paper: each class's text embedding is the mean of its prompts' normalised embeddings, normalised
again; an image is assigned the class whose embedding is closest. A labelled set is a folder holding
`labels.parquet` (columns `path`, relative to the folder, and `label`) and the images it names.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from clipmodel import transform
from clipmodel.tokenizer import tokenize

LABELS_FILE = "labels.parquet"
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class LabelledSet:
    """Preprocessed images (N, 3, R, R), their class indices (N,), and the class names, in first-seen order."""

    images: torch.Tensor
    targets: torch.Tensor
    classnames: tuple[str, ...]


def read_labelled_folder(folder: str | Path, resolution: int) -> LabelledSet:
    """The images of a labelled folder, centre-cropped to `resolution` by the training loader's eval transform."""
    folder = Path(folder)
    labels = folder / LABELS_FILE
    if not labels.is_file():
        raise FileNotFoundError(f"{folder}: not a labelled set (no {LABELS_FILE})")
    table = pq.read_table(labels, columns=["path", "label"]).to_pylist()
    if not table:
        raise ValueError(f"{labels}: no rows")
    classnames = tuple(dict.fromkeys(row["label"] for row in table))
    index = {name: i for i, name in enumerate(classnames)}
    pixels = []
    for row in table:
        path = (folder / row["path"]).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise ValueError(f"{labels}: path {row['path']!r} is outside the folder")
        pixels.append(transform.load(path.read_bytes(), resolution))  # (R, R, 3) uint8, centre crop as the loader's
    targets = torch.tensor([index[row["label"]] for row in table])  # (N,)
    return LabelledSet(transform.normalize(np.stack(pixels)), targets, classnames)


@torch.no_grad()
def classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
) -> torch.Tensor:
    """(E, C) class embeddings: per class, the mean of its normalised prompt embeddings, normalised again."""
    context = model.positional_embedding.shape[0]
    prompts = [t.format(name) for name in classnames for t in templates]
    text = tokenizer(prompts, context_length=context).to(device)  # (C*T, L)
    emb = F.normalize(model.encode_text(text).float(), dim=-1)  # (C*T, E)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)  # (C, E)
    return F.normalize(emb, dim=-1).T  # (E, C)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    labelled: LabelledSet,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    topk: Sequence[int] = (1, 5),
    tokenizer: Callable[..., torch.Tensor] = tokenize,
) -> dict[str, float]:
    """Top-k zero-shot accuracy of `model` on a labelled set: {"top1": ..., "top5": ...} (fractions)."""
    weights = classifier(model, labelled.classnames, templates, device, tokenizer)  # (E, C)
    correct = dict.fromkeys(topk, 0)
    for start in range(0, len(labelled.targets), batch_size):
        images = labelled.images[start : start + batch_size].to(device)  # (b, 3, R, R)
        targets = labelled.targets[start : start + batch_size].to(device)  # (b,)
        logits = F.normalize(model.encode_image(images).float(), dim=-1) @ weights  # (b, C)
        ranked = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices  # (b, k)
        for k in topk:
            correct[k] += int((ranked[:, :k] == targets[:, None]).any(dim=1).sum())
    n = len(labelled.targets)
    return {f"top{k}": correct[k] / n for k in topk}
