"""Reference embeddings a sample's image must not come close to: unwanted-concept prompts and evaluation images.

Both filters ask one question, the largest cosine between a sample's image embedding and a small set of reference
embeddings, and differ only in where the references come from and what the rejection says:
- concepts: text prompts ("a photo of a gun"), embedded by the model's text tower, as zero-shot classification
  does; no extra weights. A sample whose image is closer than `threshold` to any prompt is UNWANTED_CONCEPT.
- decontamination: evaluation images, embedded by the image tower (or a precomputed .npy); a sample closer than
  `threshold` to any is EVAL_SIMILAR. This catches what hashes miss (crops, re-renders, other photos of the scene).
The references must come from the model that made the dataset's embeddings: cosines across models mean nothing.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.curate.image_refs import eval_images
from schemas import reasons


@dataclass(frozen=True)
class ConceptConfig:
    prompts: tuple[str, ...] = ()  # nothing to avoid: the filter is off
    # Image-text cosines under CLIP are small (ViT-B/32 rarely passes 0.35 even for a right caption), so a prompt
    # threshold sits near the CLIP-score range; tune it on a sample of the rejections.
    threshold: float = 0.3

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"concept threshold is a cosine, between -1 and 1; got {self.threshold}")
        if any(not p.strip() for p in self.prompts):
            raise ValueError("concept prompts must not be empty")


@dataclass(frozen=True)
class DecontaminateConfig:
    path: str | None = None  # a folder of evaluation images, or a .npy of their (n, E) embeddings; None: off
    # Image-image cosines of one picture re-encoded, resized or lightly cropped stay above ~0.9 under CLIP, while
    # two photos of one kind of thing rarely pass it.
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"eval threshold is a cosine, between -1 and 1; got {self.threshold}")


@dataclass(frozen=True, eq=False)
class References:
    """Named unit vectors (r, E) and the cosine at or above which a sample's image is rejected with `reason`."""

    reason: str
    names: tuple[str, ...]
    vectors: np.ndarray  # (r, E) float32, L2-normalised
    threshold: float

    def __post_init__(self) -> None:
        if not reasons.is_known(self.reason):
            raise ValueError(f"unknown reason code {self.reason!r}")
        if self.vectors.ndim != 2 or len(self.names) != len(self.vectors):
            raise ValueError(f"{len(self.names)} names but vectors of shape {self.vectors.shape}")

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def hits(self, image: np.ndarray) -> list[str | None]:
        """Per image row: the rejection detail (nearest reference and cosine) when it is within the threshold."""
        best, sims = nearest_reference(image, self.vectors)
        return [
            f"{self.names[j]} (cos {s:.4f})" if s >= self.threshold else None
            for j, s in zip(best.tolist(), sims.tolist(), strict=True)
        ]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_reference(image: np.ndarray, refs: np.ndarray, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most similar reference, its cosine) per image row; rows `block` at a time, since a shard of
    images times thousands of eval images would otherwise be one large matrix."""
    n = len(image)
    best, sims = np.zeros(n, np.int64), np.full(n, -np.inf, np.float32)
    if len(refs) == 0:
        return best, sims
    refs = np.asarray(refs, np.float32)
    for start in range(0, n, block):
        s = np.asarray(image[start : start + block], np.float32) @ refs.T  # (b, r)
        best[start : start + block] = s.argmax(1)
        sims[start : start + block] = s.max(1)
    return best, sims


def read_prompts(path: str | os.PathLike) -> tuple[str, ...]:
    """One prompt a line; blank lines and lines starting with # are skipped. ValueError for a file with none."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise ValueError(f"{path}: no concept prompts (one a line, # for comments)")
    return prompts


def eval_npy(path: str | os.PathLike) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, unit vectors) of a precomputed (n, E) .npy of evaluation embeddings; rows are named file[i]."""
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{path}: expected an (n, E) matrix of evaluation embeddings, got shape {x.shape}")
    name = Path(path).name
    return tuple(f"{name}[{i}]" for i in range(len(x))), normalize_rows(x)


def eval_image_files(folder: str | os.PathLike) -> tuple[tuple[str, ...], list[Path]]:
    """(names relative to the folder, paths) of its evaluation images, recursively, in a stable order."""
    paths = eval_images(folder)
    if not paths:
        raise ValueError(f"{folder}: no .jpg, .png or .webp images to decontaminate against")
    return tuple(p.relative_to(folder).as_posix() for p in paths), paths
