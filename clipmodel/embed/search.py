"""Nearest-neighbour search over an embeddings folder: a faiss index kept inside it, and the queries `wit search` runs.

    store = EmbeddingStore("data/wit-v1.emb")
    index = open_index(store, "image")          # EMB/index/image.faiss: built on first use, rebuilt when stale
    hits = search(store, index, encode_texts(loaded, ["a red circle"]), k=10)[0]

Vectors are L2-normalised, so inner product is cosine. Up to `ivf_threshold` rows the index is exact (IndexFlatIP);
above it, IVF-PQ (about 4 sqrt(N) inverted lists, m-byte codes), whose `refine * k` best candidates are re-scored
exactly against the stored float16 rows, read through a memory map: scores are true cosines, and recall is that of
the candidate list rather than of the PQ codes' own ranking. The matrices are never loaded whole.
"""

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from clipmodel import transform
from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import IndexConfig
from clipmodel.inference import LoadedModel
from clipmodel.tokenizer import tokenize
from schemas import fields
from schemas.records import EMBEDDING_METADATA_SCHEMA

INDEX_DIR = "index"
INDEX_FORMAT = "wit-builder-index"
WHICH = {"image": emb.IMG, "text": emb.TEXT}  # what an index is over -> the embeddings folder's matrix
FAISS_MIN_POINTS = 39  # training points per centroid below which faiss k-means warns and degrades


class ArrayVectors:
    """An in-memory (N, E) matrix as a vector source: for benchmarks and tests."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.rows, self.dim = self.matrix.shape

    def blocks(self, size: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, size):
            yield self.matrix[start : start + size]

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self.matrix[ids]


class ShardVectors:
    """One matrix of an embeddings folder, shard files memory-mapped side by side, read as float32 on demand."""

    def __init__(self, mats: list[np.ndarray], dim: int):
        self.mats, self.dim = mats, dim
        self.offsets = np.cumsum([0, *(m.shape[0] for m in mats)])
        self.rows = int(self.offsets[-1])

    def blocks(self, size: int = 65536) -> Iterator[np.ndarray]:
        for m in self.mats:
            for start in range(0, m.shape[0], size):
                yield np.asarray(m[start : start + size], dtype=np.float32)

    def take(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        for s in np.unique(shard):
            at = np.nonzero(shard == s)[0]
            out[at] = self.mats[s][ids[at] - self.offsets[s]]
        return out


class EmbeddingStore:
    """An embeddings folder opened for search: row metadata as one Arrow table, the matrices memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info = emb.read_info(self.root)
        if info is None:
            raise FileNotFoundError(
                f"{self.root}: not an embeddings folder (no {emb.INFO_FILE}); make one with `wit encode`"
            )
        if not info.get("complete"):
            raise ValueError(f"{self.root}: encoding did not finish; run `wit encode` again to complete it")
        self.info, self.dim = info, int(info["dim"])
        tables, mats = [], {emb.IMG: [], emb.TEXT: []}
        for entry in info["shards"]:
            paths = emb.shard_paths(self.root, int(entry["index"]))
            if not paths[emb.META].is_file():
                raise FileNotFoundError(f"{self.root}: shard {entry['index']} is listed but its files are missing")
            table = pq.read_table(paths[emb.META])
            for kind in mats:
                m = np.load(paths[kind], mmap_mode="r")
                if m.shape != (table.num_rows, self.dim):
                    raise ValueError(f"{paths[kind]}: shape {m.shape}, expected {(table.num_rows, self.dim)}")
                mats[kind].append(m)
            tables.append(table.cast(EMBEDDING_METADATA_SCHEMA))
        self.meta = pa.concat_tables(tables) if tables else EMBEDDING_METADATA_SCHEMA.empty_table()
        self._vectors = {kind: ShardVectors(m, self.dim) for kind, m in mats.items()}

    def __len__(self) -> int:
        return self.meta.num_rows

    def vectors(self, which: str) -> ShardVectors:
        return self._vectors[WHICH[which]]

    def row_of(self, key: str) -> int | None:
        found = pc.index(self.meta.column(fields.KEY), pa.scalar(key, pa.string())).as_py()
        return None if found < 0 else found

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """{key, caption, url} of each row id, in order."""
        return self.meta.take(pa.array(ids, pa.int64())).to_pylist()

    def fingerprint(self) -> str:
        """Changes whenever the folder's content may have: embeddings.json's bytes, the matrices' sizes and times."""
        h = hashlib.sha256((self.root / emb.INFO_FILE).read_bytes())
        for entry in self.info["shards"]:
            for kind, path in sorted(emb.shard_paths(self.root, int(entry["index"])).items()):
                st = path.stat()
                h.update(f"{kind}:{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()


def plan_index(rows: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """What to build for `rows` vectors of width `dim`: {"kind": "flat"} or the IVF-PQ parameters, all resolved."""
    kind = cfg.kind if cfg.kind != "auto" else ("ivfpq" if rows > cfg.ivf_threshold else "flat")
    if kind == "flat":
        return {"kind": "flat"}
    if rows < FAISS_MIN_POINTS:
        raise ValueError(f"an IVF-PQ index needs at least {FAISS_MIN_POINTS} rows, got {rows}; use a flat index")
    nlist = cfg.nlist or max(1, min(round(4 * math.sqrt(rows)), rows // FAISS_MIN_POINTS))
    m = cfg.m or max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    if dim % m:
        raise ValueError(f"PQ sub-quantizers must divide the embedding width {dim}, got m={m}")
    # Each sub-quantizer is a k-means of 2**nbits centroids: fewer bits for a set too small to train 256 of them.
    nbits = min(cfg.nbits, max(1, int(math.log2(rows / FAISS_MIN_POINTS))))
    train = cfg.train_size or max(64 * nlist, FAISS_MIN_POINTS * 2**nbits)
    return {"kind": "ivfpq", "nlist": nlist, "m": m, "nbits": nbits, "train_size": min(rows, train)}


def build_index(vectors: ArrayVectors | ShardVectors, plan: dict[str, Any], seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over every row of `vectors`, in row order (faiss ids are row numbers)."""
    if plan["kind"] == "flat":
        index = faiss.IndexFlatIP(vectors.dim)
    else:
        # "np": no polysemous training, which only serves Hamming-filtered search and takes 10x the PQ's own.
        spec = f"IVF{plan['nlist']},PQ{plan['m']}x{plan['nbits']}np"
        index = faiss.index_factory(vectors.dim, spec, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(vectors.rows, plan["train_size"], replace=False))  # sorted: sequential reads
        index.train(np.ascontiguousarray(vectors.take(sample)))
    for block in vectors.blocks():
        index.add(np.ascontiguousarray(block))
    return index


class SearchIndex:
    """A faiss index with its vectors: top-k by exact cosine (IVF-PQ candidates are re-scored)."""

    def __init__(self, index: faiss.Index, vectors: ArrayVectors | ShardVectors, plan: dict[str, Any],
                 nprobe: int = 32, refine: int = 40, built: bool = False):  # fmt: skip
        self.index, self.vectors, self.plan, self.refine, self.built = index, vectors, plan, refine, built
        if plan["kind"] == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = min(nprobe, plan["nlist"])

    @property
    def kind(self) -> str:
        return self.plan["kind"]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (q, k), best first; where fewer than k rows exist, ids -1 and scores -inf."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.kind == "flat":
            scores, ids = self.index.search(queries, k)
            return np.where(ids < 0, -np.inf, scores), ids
        _, cand = self.index.search(queries, min(k * self.refine, self.index.ntotal))  # (q, c), -1 where short
        # Re-scored a chunk of queries at a time: the candidates' rows are (q, c, E) floats.
        parts = [self._rescore(queries[i : i + 256], cand[i : i + 256], k) for i in range(0, len(queries), 256)]
        scores, ids = np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        if ids.shape[1] < k:  # fewer rows than k: padded as faiss pads
            pad = ((0, 0), (0, k - ids.shape[1]))
            scores, ids = np.pad(scores, pad, constant_values=-np.inf), np.pad(ids, pad, constant_values=-1)
        return scores, np.where(np.isfinite(scores), ids, -1)

    def _rescore(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        valid = cand >= 0
        vecs = self.vectors.take(np.where(valid, cand, 0).ravel()).reshape(*cand.shape, -1)  # (q, c, E)
        exact = np.where(valid, np.einsum("qce,qe->qc", vecs, queries), -np.inf)  # (q, c)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (q, min(c, k))
        return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)


def index_paths(root: str | Path, which: str) -> tuple[Path, Path]:
    """(faiss file, its JSON description) of the `which` index of an embeddings folder."""
    folder = Path(root) / INDEX_DIR
    return folder / f"{which}.faiss", folder / f"{which}.json"


def _replace_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def open_index(store: EmbeddingStore, which: str = "image", cfg: IndexConfig = IndexConfig(), rebuild: bool = False,
               save: bool = True, on_build: Callable[[dict[str, Any]], None] | None = None) -> SearchIndex:  # fmt: skip
    """The saved `which` index of `store` when it was built from the folder as it is now with the plan `cfg` makes;
    otherwise a new one, built and (with `save`) written atomically, index first and its description last.
    `on_build(plan)` is called before a build, which takes minutes on millions of rows."""
    if which not in WHICH:
        raise ValueError(f"index over image or text, not {which!r}")
    vectors = store.vectors(which)
    if vectors.rows == 0:
        raise ValueError(f"{store.root}: no rows to search")
    plan = plan_index(vectors.rows, store.dim, cfg)
    want = {"format": INDEX_FORMAT, "which": which, "rows": vectors.rows, "dim": store.dim, "plan": plan,
            "seed": cfg.seed, "source": store.fingerprint()}  # fmt: skip
    faiss_path, json_path = index_paths(store.root, which)
    if not rebuild and json_path.is_file() and faiss_path.is_file():
        have = json.loads(json_path.read_text())
        if {k: have.get(k) for k in want} == want and have.get("bytes") == faiss_path.stat().st_size:
            return SearchIndex(faiss.read_index(str(faiss_path)), vectors, plan, cfg.nprobe, cfg.refine)
    if on_build is not None:
        on_build(plan)
    index = build_index(vectors, plan, cfg.seed)
    if save:
        faiss_path.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomic(faiss_path, lambda tmp: faiss.write_index(index, str(tmp)))
        info_sha256 = hashlib.sha256((store.root / emb.INFO_FILE).read_bytes()).hexdigest()
        described = want | {"bytes": faiss_path.stat().st_size, "built_from": {emb.INFO_FILE: info_sha256}}
        _replace_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(described, indent=2) + "\n"))
    return SearchIndex(index, vectors, plan, cfg.nprobe, cfg.refine, built=True)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    key: str
    caption: str | None
    url: str | None
    row: int  # in the embeddings folder, shard order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search(store: EmbeddingStore, index: SearchIndex, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
    """The k nearest rows of each query (q, E), with their metadata."""
    scores, ids = index.search(queries, k)
    out = []
    for q_scores, q_ids in zip(scores, ids, strict=True):
        keep = q_ids >= 0
        metas = store.rows(q_ids[keep].tolist())
        ranked = enumerate(zip(q_scores[keep], q_ids[keep], metas, strict=True), 1)
        out.append(
            [Hit(r, float(s), m[fields.KEY], m[fields.CAPTION], m[fields.URL], int(i)) for r, (s, i, m) in ranked]
        )
    return out


def check_model(loaded: LoadedModel, info: dict[str, Any]) -> None:
    """ValueError unless `loaded` is the model that made the embeddings: another model's vectors live in another
    space, where every score would be meaningless."""
    made_by = info.get("model_weights_sha256")
    if made_by != loaded.weights_sha256:
        raise ValueError(
            f"the embeddings were made by another model ({info.get('model', '?')}, weights sha256 {str(made_by)[:12]}) "
            f"than {loaded.source} (sha256 {loaded.weights_sha256[:12]}); give the model `wit encode` used"
        )


def encode_texts(loaded: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """(q, E) float32 L2-normalised caption embeddings, as `wit encode` makes them."""
    device = next(loaded.model.parameters()).device
    tokens = tokenize(list(texts), loaded.context_length).to(device)  # (q, L)
    with torch.inference_mode():
        return F.normalize(loaded.model.encode_text(tokens).float(), dim=-1).cpu().numpy()  # (q, E)


def encode_images(loaded: LoadedModel, images: Sequence[bytes]) -> np.ndarray:
    """(q, E) float32 L2-normalised image embeddings of encoded image bytes, centre crop as `wit encode` does.
    Raises what PIL raises for bytes that are not an image."""
    device = next(loaded.model.parameters()).device
    pixels = transform.normalize(np.stack([transform.load(b, loaded.resolution) for b in images]))  # (q, 3, R, R)
    with torch.inference_mode():
        return F.normalize(loaded.model.encode_image(pixels.to(device)).float(), dim=-1).cpu().numpy()  # (q, E)


def key_query(store: EmbeddingStore, key: str, which: str = "image") -> np.ndarray:
    """(1, E): the stored `which` embedding of sample `key`, to find its neighbours without a model."""
    row = store.row_of(key)
    if row is None:
        raise ValueError(f"{store.root}: no sample with key {key!r}")
    return store.vectors(which).take(np.array([row]))
