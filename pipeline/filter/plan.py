"""What `wit filter` decides once, in the launching process, before any worker starts: which embeddings belong to
the dataset, the k-means centroids (trained on a fixed sample), and the reference sets; all of it small, picklable,
and handed to the workers in a FilterPlan."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clipmodel.embed import embeddings as emb
from pipeline.filter.clip_score import ClipScoreConfig
from pipeline.filter.references import References
from pipeline.filter.semdedup import SemDedupConfig, cluster_count, train_centroids, training_rows
from schemas import fields
from schemas.manifest import MANIFEST_NAME


@dataclass(frozen=True, eq=False)
class FilterPlan:
    """The filters in the order they apply (references, CLIP score, semantic dedup) and what the workers read."""

    embeddings: str  # the embeddings folder
    shards: tuple[int, ...]  # its shard numbers
    dim: int
    clip_score: ClipScoreConfig = ClipScoreConfig()
    references: tuple[References, ...] = ()  # in order of precedence: decontamination, then concepts
    semdedup: SemDedupConfig | None = None
    centroids: np.ndarray | None = None  # (k, E) float32, when semdedup is on


def embeddings_info(embeddings: str | os.PathLike, dataset: str | os.PathLike) -> dict:
    """The embeddings folder's info, refusing an unfinished encode or the embeddings of another dataset (a join by
    key with another dataset's vectors would keep survivors that are not in this one)."""
    info = emb.read_info(embeddings)
    if info is None:
        raise FileNotFoundError(f"{embeddings}: not an embeddings folder (no {emb.INFO_FILE}); make one with "
                                f"`wit encode {dataset} --out {embeddings}`")  # fmt: skip
    if not info.get("complete"):
        raise ValueError(f"{embeddings}: encoding did not finish; run `wit encode` again to complete it")
    want = info.get("dataset_manifest_sha256")
    have = hashlib.sha256((Path(dataset) / MANIFEST_NAME).read_bytes()).hexdigest()
    if want != have:
        raise ValueError(f"{embeddings} holds embeddings of another dataset (or another version of {dataset}): "
                         f"its dataset_manifest_sha256 is not {dataset}'s; encode this dataset first")  # fmt: skip
    return info


def shard_rows(info: dict) -> list[tuple[int, int]]:
    """(shard number, rows) of every shard of an embeddings folder, in shard order."""
    return sorted((int(s["index"]), int(s["rows"])) for s in info.get("shards", []))


def read_embedding_shard(root: str | os.PathLike, index: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, image (n, E) float32, text (n, E) float32) of one shard of an embeddings folder."""
    paths = emb.shard_paths(root, index)
    keys = pq.read_table(paths[emb.META], columns=[fields.KEY]).column(fields.KEY).to_pylist()
    image, text = np.load(paths[emb.IMG]), np.load(paths[emb.TEXT])
    if image.shape[0] != len(keys) or text.shape != image.shape:
        raise ValueError(f"{root}: shard {index} has {len(keys)} keys but matrices {image.shape} and {text.shape}")
    return keys, image.astype(np.float32), text.astype(np.float32)


def training_sample(root: str | os.PathLike, shards: list[tuple[int, int]], cfg: SemDedupConfig) -> np.ndarray:
    """The image rows k-means trains on: semdedup.training_rows of the shards laid end to end, read through a memory
    map, so only the sampled rows leave the disk. The same rows `semdedup()` takes from the concatenated matrix."""
    total = sum(rows for _, rows in shards)
    picked = training_rows(total, cfg)
    parts, offset = [], 0
    for index, rows in shards:
        local = picked[(picked >= offset) & (picked < offset + rows)] - offset
        if local.size:
            matrix = np.load(emb.shard_paths(root, index)[emb.IMG], mmap_mode="r")
            parts.append(np.asarray(matrix[local], np.float32))
        offset += rows
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def make_plan(
    embeddings: str | os.PathLike,
    info: dict,
    clip_score: ClipScoreConfig,
    references: tuple[References, ...] = (),
    semdedup: SemDedupConfig | None = None,
) -> FilterPlan:
    """The plan for an embeddings folder whose info was checked (embeddings_info): trains the k-means when asked."""
    dim, shards = int(info["dim"]), shard_rows(info)
    for ref in references:
        if ref.dim != dim:
            raise ValueError(f"{ref.reason} references are {ref.dim}-dimensional but the embeddings are {dim}: "
                             "they must come from the model that made the embeddings")  # fmt: skip
    centroids = None
    if semdedup is not None:
        total = sum(rows for _, rows in shards)
        sample = training_sample(embeddings, shards, semdedup)
        centroids = train_centroids(sample, cluster_count(total, semdedup), semdedup) if len(sample) else None
    return FilterPlan(str(embeddings), tuple(i for i, _ in shards), dim, clip_score, references, semdedup, centroids)
