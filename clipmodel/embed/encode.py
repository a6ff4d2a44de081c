"""The batched encoder behind `wit encode`: image and caption embeddings of every sample of a dataset, per shard.

    loaded = load_model("runs/tiny")
    summary = encode_dataset("data/wit-v1", loaded, "data/wit-v1.emb", EncodeConfig(batch_size=256, workers=4))

DataLoader workers read whole shards (worker w takes the shards w, w + W, ...), decode and centre-crop images as the
evaluation loader does, tokenize captions, and send batches tagged with their shard; the main process runs both
towers (autocast bf16 on CUDA unless told otherwise, fp32 on CPU), L2-normalises, and writes a shard's files once
its last batch is in (clipmodel.embed.embeddings: float16 .npy + metadata Parquet, clip-retrieval's layout).
Samples the loader cannot use (corrupt image, no caption, unsafe member, truncated shard) are skipped and counted
per shard in embeddings.json; the rows written are exactly the samples encoded, aligned by key.
Resume: shards whose files are whole are not read again; a folder made by another model or from another dataset is
refused rather than mixed.
"""

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipmodel import transform
from clipmodel.data import stages
from clipmodel.data.shardlist import list_shards
from clipmodel.data.stages import Numbered
from clipmodel.data.tarstream import Counters, read_shard
from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import EncodeConfig
from clipmodel.inference import LoadedModel, inference_autocast
from clipmodel.tokenizer import tokenize
from clipmodel.train.checkpointing import file_sha256
from schemas import fields
from schemas.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)


@dataclass
class EncodeSummary:
    shards: int = 0  # in the dataset (or the first limit_shards)
    encoded_shards: int = 0  # this call
    resumed_shards: int = 0  # already whole, skipped
    samples: int = 0  # encoded by this call
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # this call's loader counters, by reason

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class _Part(NamedTuple):
    """One batch of one shard, as a worker sends it. `final`: the shard's last message (possibly with no rows)."""

    shard: int
    final: bool
    images: torch.Tensor  # (b, 3, R, R) float32, CLIP-normalised
    tokens: torch.Tensor  # (b, L) int64
    keys: list[str]
    captions: list[str]
    urls: list[str | None]
    counters: dict[str, int]  # the shard's skip counts, on the final message


def _url_of(members: dict[str, bytes]) -> str | None:
    try:
        meta = json.loads(members["json"]) if "json" in members else None
    except ValueError:
        return None
    url = meta.get(fields.URL) if isinstance(meta, dict) else None
    return url if isinstance(url, str) else None


def shard_parts(index: int, url: str, resolution: int, context_length: int, batch_size: int) -> Iterator[_Part]:
    """One shard's samples as batches of normalised images and tokens, in tar order; the last one `final`."""
    counters = Counters()
    urls: dict[int, str | None] = {}

    def numbered() -> Iterator[Numbered]:
        for position, sample in enumerate(read_shard(url, counters)):
            urls[position] = _url_of(sample.members)
            yield Numbered(position, sample, None)  # crop None: centre, as evaluation

    def part(pixels: list[np.ndarray], decoded: list, final: bool) -> _Part:
        images = transform.normalize(np.stack(pixels)) if pixels else torch.zeros(0, 3, resolution, resolution)
        captions = [d.caption for d in decoded]
        tokens = tokenize(captions, context_length) if captions else torch.zeros(0, context_length, dtype=torch.long)
        counts = counters.as_dict() if final else {}
        return _Part(index, final, images, tokens, [d.key for d in decoded], captions,
                     [urls.pop(d.position, None) for d in decoded], counts)  # fmt: skip

    decoded, pixels = [], []
    for item in stages.decode(numbered(), resolution, counters):
        decoded.append(item)
        pixels.append(item.pixels)
        if len(decoded) == batch_size:
            yield part(pixels, decoded, final=False)
            decoded, pixels = [], []
    yield part(pixels, decoded, final=True)


class _Shards(IterableDataset):
    def __init__(self, todo: list[tuple[int, str]], resolution: int, context_length: int, batch_size: int):
        self.todo, self.resolution, self.context_length, self.batch_size = todo, resolution, context_length, batch_size

    def __iter__(self) -> Iterator[_Part]:
        info = get_worker_info()
        mine = self.todo if info is None else self.todo[info.id :: info.num_workers]
        for index, url in mine:
            yield from shard_parts(index, url, self.resolution, self.context_length, self.batch_size)


def _identity(dataset: str, loaded: LoadedModel) -> dict[str, Any]:
    manifest = f"{dataset.rstrip('/')}/{MANIFEST_NAME}"
    return {
        "dataset": dataset,
        "dataset_manifest_sha256": file_sha256(manifest),
        "model": loaded.description,
        "model_weights_sha256": loaded.weights_sha256,
        "model_config": loaded.config.to_dict(),
        "dim": loaded.config.embed_dim,
    }


def _check_resume(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The folder's info when it is a resumable encode of the same dataset by the same model; else ValueError."""
    info = emb.read_info(out)
    if info is None:
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not an embeddings folder; choose another --out")
        return {}
    for k in ("dataset_manifest_sha256", "model_weights_sha256", "dim"):
        if info.get(k) != identity[k]:
            raise ValueError(f"{out} holds embeddings of another {k.split('_')[0]} ({k} differs); choose another --out")
    return info


def encode_dataset(
    dataset: str, loaded: LoadedModel, out: str | Path, cfg: EncodeConfig = EncodeConfig(), progress: bool = False
) -> EncodeSummary:
    """Encode every sample of `dataset` with `loaded` into the embeddings folder `out`, resuming what is there."""
    out = Path(out)
    identity = _identity(dataset, loaded)
    previous = _check_resume(out, identity)
    every = list_shards(dataset)
    shards = every[: cfg.limit_shards]
    done_before = {int(s["index"]): s for s in previous.get("shards", [])}
    todo = [(i, s.url) for i, s in enumerate(shards) if not (i in done_before and emb.shard_done(out, i))]
    summary = EncodeSummary(shards=len(shards), resumed_shards=len(shards) - len(todo))
    entries = {i: s for i, s in done_before.items() if i < len(every) and emb.shard_done(out, i)}
    info = identity | {"config": asdict(cfg), "complete": False}
    emb.write_info(out, info | {"shards": sorted(entries.values(), key=lambda s: s["index"])})

    model, device = loaded.model, next(loaded.model.parameters()).device
    data = _Shards(todo, loaded.resolution, loaded.context_length, cfg.batch_size)
    workers = min(cfg.workers, len(todo))
    loader = DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    pending: dict[int, list[tuple[_Part, np.ndarray, np.ndarray]]] = {}
    skipped = Counters()
    bar = _bar(len(todo), progress)
    start = time.perf_counter()
    with torch.inference_mode(), inference_autocast(device, cfg.precision):
        for part in loader:
            image = text = np.zeros((0, loaded.config.embed_dim), np.float16)
            if part.keys:
                image = F.normalize(model.encode_image(part.images.to(device)).float(), dim=-1).cpu().numpy()
                text = F.normalize(model.encode_text(part.tokens.to(device)).float(), dim=-1).cpu().numpy()
            pending.setdefault(part.shard, []).append((part, image, text))
            summary.samples += len(part.keys)
            if not part.final:
                continue
            pieces = pending.pop(part.shard)
            emb.write_shard(
                out,
                part.shard,
                [k for p, _, _ in pieces for k in p.keys],
                [c for p, _, _ in pieces for c in p.captions],
                [u for p, _, _ in pieces for u in p.urls],
                np.concatenate([i for _, i, _ in pieces]),
                np.concatenate([t for _, _, t in pieces]),
            )
            rows = sum(len(p.keys) for p, _, _ in pieces)
            lost = {k: v for k, v in part.counters.items() if k != "samples" and v}
            entries[part.shard] = {"index": part.shard, "shard": shards[part.shard].url, "rows": rows, "skipped": lost}
            for reason, n in entries[part.shard]["skipped"].items():
                skipped.add(reason, n)
            # Listed as soon as it is whole: a killed encode resumes after its last finished shard.
            emb.write_info(out, info | {"shards": sorted(entries.values(), key=lambda s: s["index"])})
            summary.encoded_shards += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(samples=summary.samples, refresh=False)
    summary.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    summary.skipped = skipped.as_dict()
    ordered = sorted(entries.values(), key=lambda s: s["index"])
    complete = len(ordered) == len(every)  # a --limit-shards encode is a part, which filter and eval refuse
    emb.write_info(out, info | {"complete": complete, "rows": sum(s["rows"] for s in ordered), "shards": ordered})
    return summary


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="shard", disable=None, dynamic_ncols=True)
