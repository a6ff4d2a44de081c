"""An embeddings folder, as `wit encode` writes it and `wit filter`, `wit search` and `wit eval` read it.

    EMB/
      embeddings.json                 model, dataset, dim, per-shard rows and skips; "complete" once every shard is in
      img_emb/img_emb_00000.npy       (n, E) float16, L2-normalised image embeddings of shard 00000's samples
      text_emb/text_emb_00000.npy     (n, E) float16, the same samples' caption embeddings
      metadata/metadata_00000.parquet n rows (key, caption, url), row i describing row i of both matrices

This is clip-retrieval's layout, so its tools and autofaiss read it. Numbers are the shards' positions in the
dataset's shard list, zero-padded so that name order is shard order. Each file is written under a temporary name
and renamed, the metadata last: a shard whose metadata file exists is whole, which is what makes encoding resume
per shard.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import fields
from schemas.records import EMBEDDING_METADATA_SCHEMA

INFO_FILE = "embeddings.json"
IMG, TEXT, META = "img_emb", "text_emb", "metadata"
FORMAT = "wit-builder-embeddings"


def shard_paths(root: str | Path, index: int) -> dict[str, Path]:
    """The three files of shard `index`: {"img_emb": ..., "text_emb": ..., "metadata": ...}."""
    root = Path(root)
    return {
        IMG: root / IMG / f"{IMG}_{index:05d}.npy",
        TEXT: root / TEXT / f"{TEXT}_{index:05d}.npy",
        META: root / META / f"{META}_{index:05d}.parquet",
    }


def shard_done(root: str | Path, index: int) -> bool:
    return shard_paths(root, index)[META].is_file()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_shard(
    root: str | Path,
    index: int,
    keys: Sequence[str],
    captions: Sequence[str | None],
    urls: Sequence[str | None],
    image: np.ndarray,
    text: np.ndarray,
) -> None:
    """Write one shard's matrices and metadata atomically, the metadata last (it marks the shard whole)."""
    n = len(keys)
    if image.shape[0] != n or text.shape[0] != n or len(captions) != n or len(urls) != n:
        raise ValueError(f"shard {index}: {n} keys but {image.shape[0]} image and {text.shape[0]} text rows")
    paths = shard_paths(root, index)
    for kind, matrix in ((IMG, image), (TEXT, text)):
        paths[kind].parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp(paths[kind])
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(matrix, dtype=np.float16))
        os.replace(tmp, paths[kind])
    table = pa.table(
        {fields.KEY: list(keys), fields.CAPTION: list(captions), fields.URL: list(urls)},
        schema=EMBEDDING_METADATA_SCHEMA,
    )
    paths[META].parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(paths[META])
    pq.write_table(table, tmp)
    os.replace(tmp, paths[META])


def write_info(root: str | Path, info: dict[str, Any]) -> None:
    path = Path(root) / INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps({"format": FORMAT, **info}, indent=2) + "\n")
    os.replace(tmp, path)


def read_info(root: str | Path) -> dict[str, Any] | None:
    """The folder's embeddings.json, None when there is none; ValueError when it is not ours."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a wit embeddings file")
    return info


@dataclass(frozen=True)
class Embeddings:
    """A whole embeddings folder in memory: rows in shard order, matrices float32 (N, E)."""

    keys: list[str]
    captions: list[str | None]
    urls: list[str | None]
    image: np.ndarray
    text: np.ndarray
    shard_of_row: np.ndarray  # (N,) the shard index each row came from
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return self.image.shape[1]


def load_embeddings(root: str | Path, require_complete: bool = True) -> Embeddings:
    """Every shard of an embeddings folder, concatenated in shard order.

    A folder still being written (or whose encode was interrupted) is refused unless `require_complete=False`, in
    which case only its whole shards are read.
    """
    root = Path(root)
    info = read_info(root)
    if info is None:
        raise FileNotFoundError(f"{root}: not an embeddings folder (no {INFO_FILE}); make one with `wit encode`")
    if require_complete and not info.get("complete"):
        raise ValueError(f"{root}: encoding did not finish; run `wit encode` again to complete it")
    dim = int(info["dim"])
    keys, captions, urls, images, texts, shard_of_row = [], [], [], [], [], []
    for entry in info["shards"]:
        index = int(entry["index"])
        if not shard_done(root, index):
            if require_complete:
                raise FileNotFoundError(f"{root}: shard {index} is listed but its files are missing")
            continue
        paths = shard_paths(root, index)
        meta = pq.read_table(paths[META]).to_pydict()
        img, txt = np.load(paths[IMG]), np.load(paths[TEXT])
        n = len(meta[fields.KEY])
        if img.shape != (n, dim) or txt.shape != (n, dim):
            raise ValueError(f"{root}: shard {index} has {n} metadata rows but matrices {img.shape} and {txt.shape}")
        keys += meta[fields.KEY]
        captions += meta[fields.CAPTION]
        urls += meta[fields.URL]
        images.append(img)
        texts.append(txt)
        shard_of_row.append(np.full(n, index, dtype=np.int32))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)

    rows = np.concatenate(shard_of_row) if shard_of_row else np.zeros(0, np.int32)
    return Embeddings(keys, captions, urls, cat(images), cat(texts), rows, info)
