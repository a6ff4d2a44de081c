"""Zero-shot evaluation on a labelled set stored as WebDataset shards: each sample's class is a field of its JSON.

    report = evaluate_zeroshot_shards(model, resolution, "data/eval-wds", "label", EvalConfig())

The set is anything clipmodel.data.shardlist lists (our dataset, an img2dataset output folder, one .tar); the class of a
sample is `meta[field]` of its `.json` member, as img2dataset writes extra columns (`--save_additional_columns`).
Shards are read once, streamed: DataLoader workers take whole shards, decode and centre-crop as the evaluation loader
does, and only the features and labels stay in memory. Unlike training, a sample that cannot be used (no image, an
image that does not decode, no class) stops the evaluation: skipping it would change every number reported.
"""

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipmodel import transform
from clipmodel.data.shardlist import list_shards
from clipmodel.data.stages import IMAGE_EXTS
from clipmodel.data.tarstream import Counters, RawSample, read_shard
from clipmodel.eval.config import EvalConfig
from clipmodel.eval.reports import zeroshot_report
from clipmodel.eval.zeroshot import LABELS_FILE, prompt_embeddings
from clipmodel.tokenizer import tokenize
from schemas.manifest import MANIFEST_NAME


def is_shard_set(path: str | Path) -> bool:
    """Whether `path` names shards rather than an image folder: a .tar, our dataset (manifest.json), or a folder of
    .tar files (img2dataset's output) without a labels.parquet."""
    p = Path(path)
    if p.suffix == ".tar":
        return True
    if not p.is_dir() or (p / LABELS_FILE).is_file():
        return False
    return (p / MANIFEST_NAME).is_file() or any(p.glob("*.tar"))


def sample_label(sample: RawSample, field: str, where: str) -> str:
    """The class name in `field` of a sample's JSON member; ValueError when it has none."""
    try:
        meta = json.loads(sample.members["json"]) if "json" in sample.members else None
    except ValueError:
        meta = None
    value = meta.get(field) if isinstance(meta, dict) else None
    # Text only: prompts are made of class names, and "a photo of a 3." says nothing about class 3.
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: sample {sample.key} has no class name in its JSON field {field!r} (got {value!r})")
    return value.strip()


def shard_batches(url: str, field: str, resolution: int, batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """((b, 3, R, R) uint8 centre crops, their class names) of one shard, `batch_size` samples at a time."""
    counters = Counters()
    pixels, labels = [], []
    for sample in read_shard(url, counters):
        ext = next((e for e in IMAGE_EXTS if e in sample.members), None)
        if ext is None:
            raise ValueError(f"{url}: sample {sample.key} has no image member")
        label = sample_label(sample, field, url)
        try:
            pixels.append(transform.load(sample.members[ext], resolution))  # (3, R, R) uint8
        except Exception as e:  # PIL raises many kinds for bad bytes
            raise ValueError(f"{url}: sample {sample.key}: cannot read its image ({e})") from None
        labels.append(label)
        if len(labels) == batch_size:
            yield np.stack(pixels), labels
            pixels, labels = [], []
    if counters.errors:
        problems = {k: v for k, v in counters.as_dict().items() if k != "samples"}
        raise ValueError(f"{url}: unreadable parts of the shard: {problems}")
    if labels:
        yield np.stack(pixels), labels


class _Shards(IterableDataset):
    def __init__(self, urls: list[str], field: str, resolution: int, batch_size: int):
        self.urls, self.field, self.resolution, self.batch_size = urls, field, resolution, batch_size

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[str]]]:
        info = get_worker_info()
        mine = self.urls if info is None else self.urls[info.id :: info.num_workers]
        for url in mine:
            yield from shard_batches(url, self.field, self.resolution, self.batch_size)


@torch.no_grad()
def shard_features(
    model: torch.nn.Module,
    dataset: str | Path,
    field: str,
    resolution: int,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> tuple[torch.Tensor, list[str]]:
    """(N, E) L2-normalised image embeddings of every sample of a shard set, on the CPU, and each one's class."""
    urls = [s.url for s in list_shards(str(dataset))]
    data = _Shards(urls, field, resolution, batch_size)
    workers = min(workers, len(urls))
    loader = DataLoader(data, batch_size=None, num_workers=workers)
    features, labels = [], []
    for pixels, names in loader:  # (b, 3, R, R) uint8, b names
        images = transform.normalize(np.asarray(pixels)).to(device)  # (b, 3, R, R) float32
        features.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())  # (b, E)
        labels += names
    if not labels:
        raise ValueError(f"{dataset}: no samples to evaluate")
    return torch.cat(features), labels


def evaluate_zeroshot_shards(
    model: torch.nn.Module,
    resolution: int,
    dataset: str | Path,
    field: str,
    cfg: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
    classnames: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`zeroshot_report` of `model` on a shard set whose samples name their class in JSON field `field`.

    The classes are `classnames` when given (a class outside them is a ValueError), else every class met, sorted by
    name: the same however many workers read the shards.
    """
    cfg = cfg or EvalConfig()
    features, labels = shard_features(model, dataset, field, resolution, device, cfg.batch_size, cfg.workers)
    names = tuple(classnames) if classnames is not None else tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"{dataset}: {len(unknown)} classes not among the given class names, e.g. {unknown[0]!r}")
    targets = torch.tensor([index[label] for label in labels], dtype=torch.long)  # (N,)
    prompts = prompt_embeddings(model, names, cfg.templates, device, tokenizer, cfg.batch_size).cpu()  # (C, T, E)
    return zeroshot_report(features, prompts, targets, names, cfg.templates, None, cfg.topk)
