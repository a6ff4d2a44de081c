"""Embeddings of material outside a dataset, by the same model and transform as `wit encode`: text prompts (unwanted
concepts for `wit filter`) and image files (evaluation images to decontaminate against).

    vectors = encode_texts(loaded, ["a photo of a gun", "a screenshot"])  # (2, E) float32, L2-normalised
    vectors = encode_image_files(loaded, sorted(Path("eval").glob("*.png")))
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipmodel import transform
from clipmodel.inference import LoadedModel
from clipmodel.tokenizer import tokenize


def _device(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(n, E) float32 L2-normalised text embeddings, fp32 (a few prompts: precision costs nothing here)."""
    out = [np.zeros((0, loaded.config.embed_dim), np.float32)]
    for start in range(0, len(texts), batch_size):
        tokens = tokenize(list(texts[start : start + batch_size]), loaded.context_length)  # (b, L)
        emb = loaded.model.encode_text(tokens.to(_device(loaded))).float()  # (b, E)
        out.append(F.normalize(emb, dim=-1).cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def encode_image_files(loaded: LoadedModel, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
    """(n, E) float32 L2-normalised image embeddings, each image centre-cropped as the encoder and evaluation crop it.

    ValueError naming the file for one that is not a readable image: a hole in a reference set would go unnoticed.
    """
    out = [np.zeros((0, loaded.config.embed_dim), np.float32)]
    for start in range(0, len(paths), batch_size):
        pixels = []
        for path in paths[start : start + batch_size]:
            try:
                pixels.append(transform.load(Path(path).read_bytes(), loaded.resolution))  # (3, R, R) uint8
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        images = transform.normalize(np.stack(pixels)).to(_device(loaded))  # (b, 3, R, R)
        out.append(F.normalize(loaded.model.encode_image(images).float(), dim=-1).cpu().numpy())  # (b, E)
    return np.concatenate(out)
