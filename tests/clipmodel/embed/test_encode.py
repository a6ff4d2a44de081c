"""The batched encoder: embeddings equal direct model calls, aligned by key, per-shard files, resume, bad samples."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from clipmodel import transform
from clipmodel.embed import embeddings as emb
from clipmodel.embed.config import EncodeConfig
from clipmodel.embed.encode import encode_dataset
from clipmodel.factory import create_model
from clipmodel.inference import load_model
from clipmodel.tokenizer import tokenize
from schemas import fields


@pytest.fixture
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


def _samples(dataset: Path) -> dict[str, tuple[bytes, str, str]]:
    """key -> (image bytes, caption, url), read with tarfile, independently of the encoder's reader."""
    out = {}
    for tar in sorted((dataset / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
        for name, data in members.items():
            key, _, ext = name.partition(".")
            if ext == "jpg":
                meta = json.loads(members[f"{key}.json"])
                out[key] = (data, members[f"{key}.txt"].decode(), meta[fields.URL])
    return out


def test_embeddings_equal_direct_model_calls(shapes_dataset: Path, weights: Path, tmp_path: Path) -> None:
    loaded = load_model(weights, arch="tiny", device="cpu")
    summary = encode_dataset(str(shapes_dataset), loaded, tmp_path / "emb", EncodeConfig(batch_size=50, workers=2))
    got = emb.load_embeddings(tmp_path / "emb")
    truth = _samples(shapes_dataset)
    assert summary.samples == len(got) == len(truth) == 384 and summary.encoded_shards == 3
    assert sorted(got.keys) == sorted(truth) and len(set(got.keys)) == len(got.keys)
    assert got.image.shape == got.text.shape == (384, 128)
    np.testing.assert_allclose(np.linalg.norm(got.image, axis=1), 1.0, atol=2e-3)  # float16 storage

    pick = [0, 1, 127, 128, 200, 383]  # across batches and shards
    keys = [got.keys[i] for i in pick]
    images = transform.normalize(np.stack([transform.load(truth[k][0], 64) for k in keys]))
    with torch.no_grad():
        direct_img = F.normalize(loaded.model.encode_image(images), dim=-1).numpy()
        direct_txt = F.normalize(loaded.model.encode_text(tokenize([truth[k][1] for k in keys])), dim=-1).numpy()
    np.testing.assert_allclose(got.image[pick], direct_img, atol=1e-3)  # float16 rounding only
    np.testing.assert_allclose(got.text[pick], direct_txt, atol=1e-3)
    assert [got.captions[i] for i in pick] == [truth[k][1] for k in keys]
    assert [got.urls[i] for i in pick] == [truth[k][2] for k in keys]
    info = emb.read_info(tmp_path / "emb")
    assert info["complete"] and info["rows"] == 384 and [s["rows"] for s in info["shards"]] == [128, 128, 128]
    # clip-retrieval's layout: names and dtypes
    assert np.load(tmp_path / "emb" / "img_emb" / "img_emb_00002.npy").dtype == np.float16
    assert pq.read_table(tmp_path / "emb" / "metadata" / "metadata_00000.parquet").num_rows == 128


def test_resume_encodes_only_missing_shards(shapes_dataset: Path, weights: Path, tmp_path: Path) -> None:
    loaded = load_model(weights, arch="tiny", device="cpu")
    out = tmp_path / "emb"
    first = encode_dataset(str(shapes_dataset), loaded, out, EncodeConfig(batch_size=64, workers=0, limit_shards=2))
    assert first.encoded_shards == 2 and not emb.read_info(out)["complete"]
    with pytest.raises(ValueError, match="did not finish"):
        emb.load_embeddings(out)
    before = (out / "img_emb" / "img_emb_00000.npy").stat().st_mtime_ns
    second = encode_dataset(str(shapes_dataset), loaded, out, EncodeConfig(batch_size=64, workers=0))
    assert (second.resumed_shards, second.encoded_shards, second.samples) == (2, 1, 128)
    assert (out / "img_emb" / "img_emb_00000.npy").stat().st_mtime_ns == before
    assert len(emb.load_embeddings(out)) == 384

    other = create_model("tiny")  # another model: refused, not mixed in
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another model"):
        encode_dataset(str(shapes_dataset), load_model(tmp_path / "other.pt", arch="tiny", device="cpu"), out)


def test_bad_samples_are_skipped_and_counted(make_shapes_dataset, weights: Path, tmp_path: Path) -> None:
    dataset = make_shapes_dataset(tmp_path / "ds", samples=20, per_shard=10)
    shard = sorted((dataset / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for m, data in members:
            if m.name.startswith("shape00003.jpg"):
                data = b"not an image"
                m.size = len(data)
            if m.name.startswith("shape00005.txt"):
                continue  # its .json still has the caption
            t.addfile(m, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    summary = encode_dataset(str(dataset), load_model(weights, arch="tiny", device="cpu"), tmp_path / "emb")
    got = emb.load_embeddings(tmp_path / "emb")
    assert summary.samples == len(got) == 19 and "shape00003" not in got.keys and "shape00005" in got.keys
    assert summary.skipped == {"corrupt_image": 1}
    assert emb.read_info(tmp_path / "emb")["shards"][0]["skipped"] == {"corrupt_image": 1}


def test_load_model_from_training_checkpoint_and_refusals(weights: Path, tmp_path: Path) -> None:
    from clipmodel.train import checkpointing as ckpt

    model = create_model("tiny")
    state = {"format": ckpt.FORMAT, "step": 7, "config": {"model": "tiny"}, "model_config": model.config.to_dict(),
             "model": model.state_dict()}  # fmt: skip
    ckpt.save_atomic(state, ckpt.checkpoint_path(tmp_path / "run", 7))
    loaded = load_model(tmp_path / "run", device="cpu")  # a run folder: its newest checkpoint
    assert loaded.config == model.config and "7 steps" in loaded.description
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], p)
    with pytest.raises(ValueError, match="another architecture"):
        load_model(tmp_path / "run", arch="tiny-rn")
    with pytest.raises(FileNotFoundError, match="no model"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no training checkpoints"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        load_model(weights, arch="tiny-rn")
