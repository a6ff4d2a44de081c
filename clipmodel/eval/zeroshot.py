"""Zero-shot classification: labelled image sets, class names through prompt templates into a classifier, top-k.

As in the CLIP paper: each class's text embedding is the mean of its prompts' normalised embeddings, normalised
again; an image is assigned the class whose embedding is closest. A labelled set is either

- a labelled folder: `labels.parquet` (columns `path`, relative to the folder, and `label`; optionally `split`,
  which the synthetic web's eval sets use for train vs held-out classes) and the images it names; or
- an image-folder tree (torchvision's ImageFolder layout): one subfolder per class with its images inside, the class
  name being the folder's name with `_` and `-` read as spaces.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from clipmodel import templates as tpl
from clipmodel import transform
from clipmodel.tokenizer import tokenize

LABELS_FILE = "labels.parquet"
DEFAULT_TEMPLATES = tpl.DEFAULT
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class LabelledFiles:
    """A labelled set before decoding: image paths, each one's class index, the class names, and each image's
    `split` when the set has that column (else None)."""

    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    classnames: tuple[str, ...]
    split: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class LabelledSet:
    """Preprocessed images (N, 3, R, R), their class indices (N,), and the class names, in first-seen order."""

    images: torch.Tensor
    targets: torch.Tensor
    classnames: tuple[str, ...]


def class_name(folder_name: str) -> str:
    """An image-folder tree's class name: `golden_retriever` and `golden-retriever` both read `golden retriever`."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def _parquet_labels(folder: Path) -> tuple[list[Path], list[str], list[str] | None]:
    labels = folder / LABELS_FILE
    columns = ["path", "label"] + (["split"] if "split" in pq.ParquetFile(labels).schema_arrow.names else [])
    table = pq.read_table(labels, columns=columns).to_pydict()
    if not table["path"]:
        raise ValueError(f"{labels}: no rows")
    root = folder.resolve()
    paths = []
    for name in table["path"]:
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{labels}: path {name!r} is outside the folder")
        paths.append(path)
    return paths, table["label"], table.get("split")


def _tree_labels(folder: Path) -> tuple[list[Path], list[str], list[str], None]:
    """Paths and labels of an image-folder tree, plus its class names in folder-name order (empty ones included:
    they still compete in the classifier, as ImageNet's classes do whatever the evaluation subset holds)."""
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = [class_name(d.name) for d in dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: two class folders read as the same class name")
    paths, labels = [], []
    for d, name in zip(dirs, names, strict=True):
        for path in sorted(d.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith("."):
                paths.append(path)
                labels.append(name)
    if not paths:
        raise FileNotFoundError(f"{folder}: not a labelled set (no {LABELS_FILE}, and no class subfolders with images)")
    return paths, labels, names, None


def read_labels(folder: str | Path, classnames: Sequence[str] | None = None) -> LabelledFiles:
    """The images and labels of a labelled folder or an image-folder tree, not yet decoded.

    Class names are first-seen order (labelled folder) or folder-name order (tree). Given `classnames`, targets
    index that list instead, so a shifted copy of a set is scored by the same classifier; a label outside it is a
    ValueError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / LABELS_FILE).is_file():
        paths, labels, split = _parquet_labels(folder)
        found = list(dict.fromkeys(labels))
    else:
        paths, labels, found, split = _tree_labels(folder)
    names = tuple(found if classnames is None else classnames)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"{folder}: {len(unknown)} labels not among the reference classes, e.g. {unknown[0]!r}")
    split = None if split is None else tuple(s if s is not None else "" for s in split)
    return LabelledFiles(tuple(paths), tuple(index[label] for label in labels), names, split)


def read_labelled_folder(folder: str | Path, resolution: int) -> LabelledSet:
    """The images of a labelled set, decoded and centre-cropped to `resolution` by the training loader's eval
    transform, all in memory (fine for an eval set checked during training; `clipmodel.eval.reports` streams
    instead)."""
    files = read_labels(folder)
    pixels = [transform.load(path.read_bytes(), resolution) for path in files.paths]  # (3, R, R) uint8 each
    return LabelledSet(transform.normalize(np.stack(pixels)), torch.tensor(files.targets), files.classnames)


@torch.no_grad()
def prompt_embeddings(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
    batch_size: int = 1024,
) -> torch.Tensor:
    """(C, T, E) normalised text embedding of every class name in every template, encoded `batch_size` at a time
    (ImageNet's 1,000 classes x 80 templates are 80,000 prompts)."""
    context = model.positional_embedding.shape[0]
    prompts = [t.format(name) for name in classnames for t in templates]
    out = []
    for start in range(0, len(prompts), batch_size):
        text = tokenizer(prompts[start : start + batch_size], context_length=context).to(device)  # (b, L)
        out.append(F.normalize(model.encode_text(text).float(), dim=-1))  # (b, E)
    return torch.cat(out).view(len(classnames), len(templates), -1)  # (C, T, E)


def ensemble(prompts: torch.Tensor) -> torch.Tensor:
    """(E, C) classifier from (C, T, E) prompt embeddings: the mean over templates, normalised again."""
    return F.normalize(prompts.mean(dim=1), dim=-1).T  # (E, C)


def classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
) -> torch.Tensor:
    """(E, C) class embeddings: per class, the mean of its normalised prompt embeddings, normalised again."""
    return ensemble(prompt_embeddings(model, classnames, templates, device, tokenizer))


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: the fraction of rows whose target is among the k highest logits (k is capped at
    the number of classes, so top5 of a 3-way task is 1.0). Empty input gives 0.0."""
    n = logits.shape[0]
    if n == 0:
        return {f"top{k}": 0.0 for k in topk}
    ranked = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices  # (N, k)
    hits = ranked == targets.to(logits.device)[:, None]  # (N, k)
    return {f"top{k}": int(hits[:, :k].any(dim=1).sum()) / n for k in topk}


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
    logits = []
    for start in range(0, len(labelled.targets), batch_size):
        images = labelled.images[start : start + batch_size].to(device)  # (b, 3, R, R)
        logits.append(F.normalize(model.encode_image(images).float(), dim=-1) @ weights)  # (b, C)
    return topk_accuracy(torch.cat(logits), labelled.targets, topk)
