"""Image-text retrieval Recall@K over paired embeddings (pair i: image i and its caption, text i), in blocks.

The convention for duplicate captions: captions that are the same string are one text, since no model can tell
them apart.
- image -> text: the gallery holds each distinct caption once; an image is right at K when its own caption is
  among the K nearest.
- text -> image: one query per distinct caption; it is right at K when an image it captions (its own image, or
  another image bearing the very same caption) is among the K nearest.
With no duplicates this is the usual per-pair Recall@K. Pass `captions=None` to treat every row as distinct.
Ties count against the query: a wrong item scoring the same as the best right one ranks ahead of it, so a model
whose embeddings are all alike scores zero, not one.

Similarities are computed a block of queries at a time against the whole gallery, so 100k x 100k never
materialises: a block holds at most `max_block` similarities.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KS = (1, 5, 10)
MAX_BLOCK = 1 << 24  # similarities per block: 64 MiB of float32, plus as many bytes of mask


def caption_groups(captions: Sequence[str | None]) -> np.ndarray:
    """(N,) int64 id per row, equal for rows whose caption is the same string; a missing caption is its own."""
    ids: dict[str, int] = {}
    out = np.empty(len(captions), dtype=np.int64)
    fresh = 0
    for i, caption in enumerate(captions):
        if caption is None:
            out[i] = fresh
            fresh += 1
            continue
        if caption not in ids:
            ids[caption] = fresh
            fresh += 1
        out[i] = ids[caption]
    return out


@torch.no_grad()
def positive_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_group: torch.Tensor,
    gallery_group: torch.Tensor,
    max_block: int = MAX_BLOCK,
) -> torch.Tensor:
    """(Q,) int64 zero-based rank of each query's best-ranked positive (gallery items of its group): the number of
    other items scoring at least as high. Queries (Q, E) and gallery (G, E) are compared by dot product."""
    g = gallery.shape[0]
    rows = max(1, max_block // max(g, 1))
    ranks = []
    for start in range(0, queries.shape[0], rows):
        scores = queries[start : start + rows] @ gallery.T  # (b, G)
        positive = query_group[start : start + rows, None] == gallery_group[None, :]  # (b, G)
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1)  # (b,)
        ranks.append(((scores >= best[:, None]) & ~positive).sum(dim=1))  # (b,)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def recall_summary(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, Any]:
    """{"queries", "R@1", "R@5", "R@10", "median_rank"} from zero-based ranks; the median rank is one-based."""
    n = ranks.numel()
    out: dict[str, Any] = {"queries": n}
    out |= {f"R@{k}": int((ranks < k).sum()) / n if n else 0.0 for k in ks}
    out["median_rank"] = float(np.median(ranks.numpy() + 1)) if n else None  # the mean of the middle two when even
    return out


def _first_of_each(groups: np.ndarray) -> np.ndarray:
    _, first = np.unique(groups, return_index=True)
    return np.sort(first)


def retrieval_report(
    image: np.ndarray | torch.Tensor,
    text: np.ndarray | torch.Tensor,
    captions: Sequence[str | None] | None = None,
    ks: Sequence[int] = KS,
    device: torch.device | str = "cpu",
    max_block: int = MAX_BLOCK,
) -> dict[str, Any]:
    """Recall@K both ways for paired embeddings (N, E), under the duplicate-caption convention above."""
    image, text = torch.as_tensor(image), torch.as_tensor(text)
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text embeddings must be paired (N, E) matrices, got {image.shape}, {text.shape}")
    n = image.shape[0]
    groups = np.arange(n, dtype=np.int64) if captions is None else caption_groups(captions)
    if len(groups) != n:
        raise ValueError(f"{n} embedding pairs but {len(groups)} captions")
    image = F.normalize(image.float(), dim=-1).to(device)  # (N, E)
    text = F.normalize(text.float(), dim=-1).to(device)  # (N, E)
    distinct = torch.from_numpy(_first_of_each(groups)).to(device)  # (D,) one row per distinct caption
    group = torch.from_numpy(groups).to(device)  # (N,)
    i2t = positive_ranks(image, text[distinct], group, group[distinct], max_block)  # (N,)
    t2i = positive_ranks(text[distinct], image, group[distinct], group, max_block)  # (D,)
    return {
        "pairs": n,
        "distinct_captions": len(distinct),
        "image_to_text": recall_summary(i2t.cpu(), ks),
        "text_to_image": recall_summary(t2i.cpu(), ks),
    }
