"""Reference embeddings (prompts, image files) equal direct model calls through the encoder's transform."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipmodel import transform
from clipmodel.embed.encode_refs import encode_image_files, encode_texts
from clipmodel.factory import create_model
from clipmodel.inference import load_model
from clipmodel.tokenizer import tokenize


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(create_model("tiny").state_dict(), path)
    return load_model(path, arch="tiny", device="cpu")


def test_encode_texts(loaded) -> None:
    prompts = ["a photo of a gun", "a screenshot", "a logo"]
    got = encode_texts(loaded, prompts, batch_size=2)
    with torch.no_grad():
        direct = F.normalize(loaded.model.encode_text(tokenize(prompts)), dim=-1).numpy()
    assert got.shape == (3, loaded.config.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert encode_texts(loaded, []).shape == (0, loaded.config.embed_dim)


def test_encode_image_files(loaded, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(80, 60), (64, 64), (50, 90)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    got = encode_image_files(loaded, paths, batch_size=2)
    pixels = np.stack([transform.load(p.read_bytes(), loaded.resolution) for p in paths])
    with torch.no_grad():
        direct = F.normalize(loaded.model.encode_image(transform.normalize(pixels)), dim=-1).numpy()
    np.testing.assert_allclose(got, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        encode_image_files(loaded, [paths[0], tmp_path / "bad.png"])
