"""Search indexes: exact neighbours, IVF-PQ recall against flat, the saved index's reuse and rebuild, the store."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import IndexConfig
from clipmodel.embed.search import (
    ArrayVectors,
    EmbeddingStore,
    SearchIndex,
    build_index,
    check_model,
    index_paths,
    key_query,
    open_index,
    plan_index,
    search,
)


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_returns_exact_neighbours() -> None:
    x = _unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0], [1, 0.1, 0, 0], [-1, 0, 0, 0])
    vectors = ArrayVectors(x)
    index = SearchIndex(build_index(vectors, {"kind": "flat"}), vectors, {"kind": "flat"})
    scores, ids = index.search(_unit([1, 0, 0, 0], [0, 1, 0.5, 0]), k=3)
    assert ids.tolist() == [[0, 4, 3], [1, 3, 2]]
    np.testing.assert_allclose(scores[0], [1.0, 1 / np.sqrt(1.01), 1 / np.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(scores[1], [1 / np.sqrt(1.25), 1 / np.sqrt(2.5), 0.5 / np.sqrt(1.25)], atol=1e-6)
    scores, ids = index.search(_unit([1, 0, 0, 0]), k=8)  # more than there are rows: padded
    assert ids[0, 6:].tolist() == [-1, -1] and np.isneginf(scores[0, 6:]).all() and ids[0, 5] == 5


def test_plan_index_sizes() -> None:
    assert plan_index(1000, 512, IndexConfig()) == {"kind": "flat"}
    big = plan_index(1_000_000, 512, IndexConfig())
    assert big == {"kind": "ivfpq", "nlist": 4000, "m": 64, "nbits": 8, "train_size": 256_000}
    small = plan_index(400, 64, IndexConfig(kind="ivfpq"))  # forced on a small set: fewer lists and bits
    assert small == {"kind": "ivfpq", "nlist": 10, "m": 8, "nbits": 3, "train_size": 400}
    with pytest.raises(ValueError, match="divide"):
        plan_index(1_000_000, 512, IndexConfig(m=100))
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="hnsw")


def test_ivfpq_recall_against_flat() -> None:
    # Real embeddings cluster; uniform random vectors have no neighbours worth finding, so draw around centres.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, 64))  # (C, 64)
    x = centres[rng.integers(256, size=20_200)] * np.sqrt(64) / 0.6 + rng.standard_normal((20_200, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # (N, 64)
    data, queries = ArrayVectors(x[:20_000]), x[20_000:]  # queries from the same clusters, not in the index
    plan = plan_index(data.rows, data.dim, IndexConfig(kind="ivfpq"))
    assert plan == {"kind": "ivfpq", "nlist": 512, "m": 8, "nbits": 8, "train_size": 20_000}
    cfg = IndexConfig()
    ivfpq = SearchIndex(build_index(data, plan, cfg.seed), data, plan, cfg.nprobe, cfg.refine)
    flat = SearchIndex(build_index(data, {"kind": "flat"}), data, {"kind": "flat"})
    _, truth = flat.search(queries, 10)
    _, found = ivfpq.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.9, recall


def _write_folder(root: Path, seed: int, rows: tuple[int, ...] = (200, 150), dim: int = 16) -> np.ndarray:
    """An embeddings folder as `wit encode` writes it, from random unit vectors; returns the image matrix."""
    rng = np.random.default_rng(seed)
    images, entries = [], []
    for index, n in enumerate(rows):
        image, text = (_unit(*rng.standard_normal((n, dim))) for _ in range(2))
        keys = [f"s{index}_{i:04d}" for i in range(n)]
        emb.write_shard(root, index, keys, [f"caption {k}" for k in keys], [f"http://x.test/{k}" for k in keys],
                        image, text)  # fmt: skip
        images.append(image.astype(np.float16).astype(np.float32))
        entries.append({"index": index, "rows": n})
    emb.write_info(root, {"dim": dim, "model_weights_sha256": "abc", "complete": True, "shards": entries})
    return np.concatenate(images)


def test_saved_index_is_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    root = tmp_path / "emb"
    image = _write_folder(root, seed=0)
    store = EmbeddingStore(root)
    assert len(store) == 350 and store.dim == 16
    np.testing.assert_array_equal(store.vectors("image").take(np.array([5, 199, 200, 349])), image[[5, 199, 200, 349]])

    first = open_index(store, "image", IndexConfig(kind="flat"))
    faiss_path, json_path = index_paths(root, "image")
    assert first.built and faiss_path.is_file() and json.loads(json_path.read_text())["rows"] == 350
    assert not list(faiss_path.parent.glob(".*tmp*"))  # written under temporary names, then renamed
    again = open_index(EmbeddingStore(root), "image", IndexConfig(kind="flat"))
    assert not again.built and again.index.ntotal == 350

    hits = search(store, again, key_query(store, "s1_0007"), k=3)[0]  # a sample's own embedding: itself first
    assert hits[0].key == "s1_0007" and hits[0].row == 207 and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert hits[0].caption == "caption s1_0007" and hits[0].url == "http://x.test/s1_0007" and hits[1].rank == 2
    exact = np.argsort(-(image @ image[207]))[:3]
    assert [h.row for h in hits] == exact.tolist()

    assert open_index(store, "image", IndexConfig(kind="ivfpq")).built  # another plan: rebuilt
    ivf = open_index(EmbeddingStore(root), "image", IndexConfig(kind="ivfpq"))
    assert not ivf.built and ivf.kind == "ivfpq"
    hits = search(store, ivf, key_query(store, "s0_0003"), k=5)[0]  # 50 PQ candidates, re-scored exactly
    assert hits[0].key == "s0_0003" and hits[0].score == pytest.approx(1.0, abs=2e-3)

    _write_folder(root, seed=1, rows=(200, 160))  # re-encoded: other vectors, other rows
    changed = open_index(EmbeddingStore(root), "image", IndexConfig(kind="ivfpq"))
    assert changed.built and changed.index.ntotal == 360
    assert open_index(EmbeddingStore(root), "text", IndexConfig(kind="flat")).built  # a separate text index
    assert index_paths(root, "text")[0].is_file()
    with pytest.raises(ValueError, match="no sample"):
        key_query(store, "nope")


def test_store_refuses_unfinished_folders_and_other_models(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        EmbeddingStore(tmp_path)
    _write_folder(tmp_path / "emb", seed=0)
    info = emb.read_info(tmp_path / "emb")
    emb.write_info(tmp_path / "emb", info | {"complete": False})
    with pytest.raises(ValueError, match="did not finish"):
        EmbeddingStore(tmp_path / "emb")
    check_model(SimpleNamespace(weights_sha256="abc", source="m.pt"), info)
    with pytest.raises(ValueError, match="another model"):
        check_model(SimpleNamespace(weights_sha256="def", source="m.pt"), info)
