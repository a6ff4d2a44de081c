"""The training loader's stages: small generators over iterators, composed per DataLoader worker in loader.py.

Each stage is testable alone as `list(stage(iter(xs), ...))`. Problems are counted in an injected `Counters` and the
sample skipped; nothing here raises for bad data. Order of the composition, and why:

    read_pieces -> shuffle -> number (positions, crop and augmentation draws, resume skip) -> decode -> batch

Shuffling and skipping act on raw bytes, before the costly decode: a resume replays the stream without decoding.
"""

import json
import random
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from clipmodel import transform
from clipmodel.data.shardlist import Piece
from clipmodel.data.tarstream import (
    BAD_METADATA,
    CORRUPT_IMAGE,
    MISSING_CAPTION,
    MISSING_IMAGE,
    SAMPLES,
    Counters,
    RawSample,
    read_shard,
)
from schemas import fields

# Image members in order of preference; "jpeg" because other WebDataset writers use it.
IMAGE_EXTS = (*fields.IMAGE_FORMATS, "jpeg")
Tokenize = Callable[[list[str]], torch.Tensor]  # captions -> (N, context_length) int64


class Batch(NamedTuple):
    """What the loader yields. `images, tokens = batch[:2]`; the rest is for logging and exact resumption."""

    images: torch.Tensor  # (B, 3, R, R) float32, CLIP-normalized
    tokens: torch.Tensor  # (B, context_length) int64
    keys: list[str]  # sample keys, in batch order
    worker: int  # the worker role (0..workers-1) that made it
    position: int  # samples that worker had taken from its epoch stream when this batch was complete


class Numbered(NamedTuple):
    position: int  # 1-based place in the worker's epoch stream
    sample: RawSample
    crop: tuple[float, float] | None  # (fx, fy) for a random crop; None: centre
    variant: int = 0  # which of transform.augmented's variants; 0: the image as it is


class Decoded(NamedTuple):
    position: int
    key: str
    pixels: np.ndarray  # (3, R, R) uint8
    caption: str


def read_pieces(pieces: Iterable[Piece], counters: Counters) -> Iterator[RawSample]:
    """The raw samples of each piece in turn: whole shards, or every `parts`-th sample of one."""
    for piece in pieces:
        yield from read_shard(piece.shard.url, counters, piece.part, piece.parts)


def shuffle(samples: Iterable, size: int, rng: random.Random) -> Iterator:
    """Buffered shuffle: once `size` items are held, each new one displaces a random held one, which is yielded.

    The buffer is emptied in random order when the input ends, so a finite input comes out whole. size <= 1: as is.
    """
    if size <= 1:
        yield from samples
        return
    buf = []
    for item in samples:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def number(
    samples: Iterable[RawSample], skip: int = 0, crop_rng: random.Random | None = None, variants: int = 1
) -> Iterator[Numbered]:
    """Attach each sample's 1-based position, its crop draw and (with `variants` > 1) its augmentation variant; drop
    the first `skip` (already consumed) samples.

    Draws are made here for every sample, skipped ones included, so a resumed stream crops and augments exactly as
    the original. Without augmentation no variant is drawn, so the crops are those of a run before augmentation.
    """
    for position, sample in enumerate(samples, 1):
        crop = (crop_rng.random(), crop_rng.random()) if crop_rng is not None else None
        variant = int(crop_rng.random() * variants) if crop_rng is not None and variants > 1 else 0
        if position > skip:
            yield Numbered(position, sample, crop, variant)


def caption_of(members: dict[str, bytes], counters: Counters) -> str | None:
    """The .txt member, else the .json member's caption; None (counted) if there is no non-blank caption."""
    if "txt" in members:
        caption = members["txt"].decode("utf-8", "replace")
    elif "json" in members:
        try:
            meta = json.loads(members["json"])
            caption = meta.get(fields.CAPTION) if isinstance(meta, dict) else None
        except ValueError:
            counters.add(BAD_METADATA)
            return None
        if not isinstance(caption, str):
            caption = ""
    else:
        caption = ""
    if not caption.strip():
        counters.add(MISSING_CAPTION)
        return None
    return caption


def decode(
    items: Iterable[Numbered], resolution: int, counters: Counters, augment: tuple[str, ...] = ()
) -> Iterator[Decoded]:
    """Decode and preprocess each sample's image to (3, R, R) uint8, augmented as its draw says, and find its
    caption; bad samples are counted."""
    for position, sample, crop, variant in items:
        members = sample.members
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            counters.add(MISSING_IMAGE)
            continue
        caption = caption_of(members, counters)
        if caption is None:
            continue
        try:
            pixels = transform.load(members[ext], resolution, crop)
            if variant:
                pixels = transform.augmented(pixels, augment, variant)
        except Exception:  # PIL raises many kinds (OSError, ValueError, SyntaxError, DecompressionBombError)
            counters.add(CORRUPT_IMAGE)
            continue
        yield Decoded(position, sample.key, pixels, caption)


def _shared_float(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 tensor in shared memory, as DataLoader's default_collate makes in workers: passing it to the
    main process then costs no copy."""
    numel = int(np.prod(shape))
    storage = torch.empty(0)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0).new(storage).view(shape)


def batch(
    items: Iterable[Decoded],
    batch_size: int,
    tokenize: Tokenize,
    counters: Counters,
    *,
    worker: int = 0,
    drop_last: bool = True,
    shared: bool = False,
) -> Iterator[Batch]:
    """Group decoded samples into Batches: pixels gathered in one uint8 buffer, normalized in one vectorized pass,
    captions tokenized in one call. `shared`: put images in shared memory (in DataLoader workers)."""
    pixels, captions, keys, position = None, [], [], 0
    for item in items:
        if pixels is None:
            pixels = np.empty((batch_size, *item.pixels.shape), dtype=np.uint8)  # (B, 3, R, R)
        pixels[len(keys)] = item.pixels
        captions.append(item.caption)
        keys.append(item.key)
        position = item.position
        if len(keys) == batch_size:
            yield _make_batch(pixels, captions, keys, tokenize, counters, worker, position, shared)
            captions, keys = [], []
    if keys and not drop_last:
        yield _make_batch(pixels[: len(keys)], captions, keys, tokenize, counters, worker, position, shared)


def _make_batch(pixels, captions, keys, tokenize, counters, worker, position, shared) -> Batch:
    out = _shared_float(pixels[: len(keys)].shape) if shared else None
    images = transform.normalize(pixels, out=out)  # (B, 3, R, R)
    tokens = tokenize(captions)  # (B, L)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] != len(captions):
        raise ValueError(f"tokenize must return an (N, context_length) tensor, got {getattr(tokens, 'shape', tokens)}")
    counters.add(SAMPLES, len(keys))
    return Batch(images, tokens, list(keys), worker, position)


def limit(batches: Iterable[Batch], n: int | None) -> Iterator[Batch]:
    """At most `n` batches (None: all). Stops right after the n-th: asking for one more would read and decode it."""
    if n is None:
        yield from batches
        return
    if n <= 0:
        return
    for i, b in enumerate(batches, 1):
        yield b
        if i == n:
            return
