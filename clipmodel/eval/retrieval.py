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

import math
from collections import Counter
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


def _miss(n: int, positives: int, k: int) -> float:
    """Chance that none of `positives` items lands in the first `k` of `n` items in uniformly random order."""
    k = min(k, n)
    if positives <= 0 or k <= 0:
        return 1.0
    if n - positives < k:
        return 0.0
    log = math.lgamma(n - positives + 1) - math.lgamma(n - positives - k + 1)
    return math.exp(log - math.lgamma(n + 1) + math.lgamma(n - k + 1))  # C(n-p, k) / C(n, k)


def _expected_hit(matching: int, others: int, pos_matching: int, pos_others: int, k: int) -> float:
    """Expected hit@k when the `matching` items rank first (random order among them) and the `others` after."""
    if k <= matching:
        return 1.0 - _miss(matching, pos_matching, k)
    if pos_matching:
        return 1.0
    return 1.0 - _miss(others, pos_others, k - matching)


def label_oracle_report(
    image_labels: Sequence[str | None],
    caption_labels: Sequence[str | None],
    captions: Sequence[str | None],
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """Expected Recall@K, under retrieval_report's conventions, of a retriever that knows only each image's class and
    the class each caption names (None: none) and orders ties at random: a model perfect at the class and blind to
    everything else a caption says. Its recall is capped by the pairs whose caption names another class than the
    picture shows, and by how many captions share a class, so it tells what a retrieval number could reach."""
    n = len(image_labels)
    if not n == len(caption_labels) == len(captions):
        raise ValueError(f"{n} image labels, {len(caption_labels)} caption labels, {len(captions)} captions")
    groups = caption_groups(captions)
    distinct = _first_of_each(groups)
    group_label = {int(groups[i]): caption_labels[i] for i in distinct}  # a caption string names one class
    gallery_texts = Counter(group_label.values())  # distinct captions per named class
    images_of = Counter(image_labels)
    group_images: dict[int, Counter] = {}
    for g, label in zip(groups.tolist(), image_labels, strict=True):
        group_images.setdefault(g, Counter())[label] += 1

    def matching(counts: Counter, label: str | None) -> int:
        return counts[label] if label is not None else 0

    out: dict[str, Any] = {"pairs": n, "distinct_captions": len(distinct)}
    for way, queries in (("image_to_text", range(n)), ("text_to_image", distinct)):
        hits = {k: 0.0 for k in ks}
        for i in queries:
            g = int(groups[i])
            if way == "image_to_text":
                label, total = image_labels[i], len(distinct)
                top = matching(gallery_texts, label)
                own = int(label is not None and group_label[g] == label)  # its one positive: its own caption
                pos_top, pos_rest = own, 1 - own
            else:
                label, total = group_label[g], n
                top = matching(images_of, label)
                pos_top = matching(group_images[g], label)
                pos_rest = sum(group_images[g].values()) - pos_top
            for k in ks:
                hits[k] += _expected_hit(top, total - top, pos_top, pos_rest, k)
        count = len(queries)
        out[way] = {"queries": count} | {f"R@{k}": hits[k] / count if count else 0.0 for k in ks}
    return out
