"""CLIP-score filtering: the cosine of each sample's image and caption embeddings, kept above a threshold.

The threshold is fixed (LAION-400M kept pairs above 0.3 under ViT-B/32, LAION-5B's English subset above 0.28) or a
quantile: DataComp's CLIP-score baseline keeps the best 30% of its pool, so the threshold depends on every score of
the dataset and is computed once over all of them (the `ScoreThreshold` combiner), before any sample is judged.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
import numpy as np


@dataclass(frozen=True)
class ClipScoreConfig:
    """At most one of the two; neither: scores are computed and stored, nothing is dropped for them."""

    min_score: float | None = None  # keep score >= min_score
    top_fraction: float | None = None  # keep the best fraction of the dataset (ties at the cut are kept too)

    def __post_init__(self) -> None:
        if self.min_score is not None and self.top_fraction is not None:
            raise ValueError("give min_score or top_fraction, not both")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score is a cosine, between -1 and 1; got {self.min_score}")
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")


def clip_scores(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(n,) float32: row-wise dot products of (n, E) L2-normalised image and caption embeddings, i.e. their cosines."""
    if image.shape != text.shape:
        raise ValueError(f"image and text embeddings differ in shape: {image.shape} and {text.shape}")
    return np.einsum("nd,nd->n", image.astype(np.float32), text.astype(np.float32)).astype(np.float32)


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The score of the ceil(fraction * n)-th best sample: keeping score >= it keeps that many (more on a tie).

    +inf for no scores, so that nothing would pass a threshold of an empty dataset.
    """
    n = len(scores)
    if n == 0:
        return math.inf
    # The epsilon keeps 0.3 * 10 (3.0000000000000004 in floating point) at 3 samples, not 4.
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    return float(np.partition(np.asarray(scores, np.float32), n - k)[n - k])


def score_threshold(scores: np.ndarray, cfg: ClipScoreConfig) -> float | None:
    """The threshold `cfg` sets for a dataset whose scores are `scores`; None when nothing is filtered."""
    if cfg.top_fraction is not None:
        return top_fraction_threshold(scores, cfg.top_fraction)
    return cfg.min_score


def passes(scores: np.ndarray | float, threshold: float | None) -> np.ndarray | bool:
    """Whether scores pass: compared in float64 everywhere, so a float32 score and a threshold such as 0.28 (which
    float32 cannot hold) are judged alike by every step that asks."""
    if threshold is None:
        return np.ones(np.shape(scores), bool) if np.ndim(scores) else True
    result = np.asarray(scores, np.float64) >= threshold
    return result if np.ndim(scores) else bool(result)


def low_score_detail(score: float, threshold: float) -> str:
    return f"clip_score {score:.4f} < {threshold:.4f}"


class ScoreThreshold(beam.CombineFn):
    """Arrays of scores (one per embeddings shard) -> the dataset's threshold (None: no CLIP-score filter).

    A quantile needs every score at once: 4 bytes a sample on one worker (400 MB for 100M samples). A fixed
    threshold keeps nothing.
    """

    def __init__(self, cfg: ClipScoreConfig):
        super().__init__()
        self.cfg = cfg

    def create_accumulator(self) -> list:
        return []

    def add_input(self, acc: list, scores: np.ndarray) -> list:
        if self.cfg.top_fraction is not None:
            acc.append(np.asarray(scores, np.float32))
        return acc

    def merge_accumulators(self, accs: Iterable[list]) -> list:
        return [part for acc in accs for part in acc]

    def extract_output(self, acc: list) -> float | None:
        scores = np.concatenate(acc) if acc else np.zeros(0, np.float32)
        return score_threshold(scores, self.cfg)
