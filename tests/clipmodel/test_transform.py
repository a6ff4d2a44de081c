"""CLIP preprocessing: shapes, normalization values, where crops land, reduced-scale JPEG decoding, odd modes."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipmodel import transform
from clipmodel.transform import CLIP_MEAN, CLIP_STD, crop_offset, image_tensor, load, normalize, open_image, preprocess


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(pixels)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=95) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def ramp(width: int, height: int) -> np.ndarray:
    """Grey level 2 * column: the mean of a crop tells where it was taken."""
    row = (np.arange(width) * 2).clip(0, 255).astype(np.uint8)
    return np.repeat(np.broadcast_to(row[None, :], (height, width))[..., None], 3, axis=2).copy()


def test_a_uniform_grey_image_normalizes_to_known_values():
    grey = np.full((40, 56, 3), 128, dtype=np.uint8)
    x = normalize(load(encode(grey), 32)[None])
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    expected = [(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((32, 32), expected[c]), atol=1e-5)


def test_image_tensor_is_the_evaluation_transform():
    img = Image.fromarray(ramp(128, 64))
    x = image_tensor(img, 32)
    assert x.shape == (3, 32, 32) and torch.equal(x, normalize(preprocess(img, 32)[None])[0])


def test_the_centre_crop_takes_the_middle_and_a_random_crop_its_place():
    pixels = ramp(128, 64)  # shorter side 64 -> 32: a 64 x 64 source square becomes the output
    centre = load(encode(pixels), 32).astype(float)
    assert centre.shape == (3, 32, 32)
    assert abs(centre.mean() - 128) < 2  # source columns 32..96, grey 64..192
    left = load(encode(pixels), 32, crop=(0.0, 0.5)).astype(float)
    right = load(encode(pixels), 32, crop=(1.0, 0.5)).astype(float)
    assert abs(left.mean() - 64) < 2 and abs(right.mean() - 192) < 3
    assert left[:, :, 0].mean() < left[:, :, -1].mean()  # not flipped
    assert crop_offset((64, 32), 32, (0.25, 0.9)) == (8, 0)  # fy has no room on the short side
    assert crop_offset((64, 32), 32) == (16, 0) and crop_offset((33, 32), 32) == (0, 0)


def test_the_resize_matches_pils_bicubic_then_the_crop():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8))  # 60 x 80 -> 30 x 40, crop 30 x 30
    full = np.asarray(img.resize((30, 40), Image.Resampling.BICUBIC)).astype(int).transpose(2, 0, 1)  # (3, 40, 30)
    for fy, top in ((0.0, 0), (0.5, 5), (1.0, 10)):
        ours = preprocess(img, 30, crop=(0.0, fy)).astype(int)
        assert ours.shape == (3, 30, 30) and np.abs(ours - full[:, top : top + 30]).max() <= 1
    small = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))  # smaller than R: upscaled
    assert preprocess(small, 32).shape == (3, 32, 32)


def test_a_large_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    rng = np.random.default_rng(1)
    big = np.kron(rng.integers(0, 256, (96, 128, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 1024 x 768
    data = encode(big, "JPEG")
    with open_image(data, 64) as img:
        img.load()
        assert img.size == (256, 192)  # 1/4 scale: the smallest that keeps twice the 64 px target
    with open_image(data, 224) as img:
        img.load()
        assert img.size == (1024, 768)  # 768 < 2 * 2 * 224: no reduction helps
    monkeypatch.setattr(transform, "DRAFT_GAP", 1e9)  # never draft: the full-size reference
    reference = load(data, 64).astype(int)
    monkeypatch.undo()
    assert np.abs(load(data, 64).astype(int) - reference).mean() < 4  # the same picture


def test_small_or_non_jpeg_images_are_not_drafted():
    small = encode(ramp(100, 80), "JPEG")
    with open_image(small, 32) as img:
        img.load()
        assert img.size == (100, 80)  # 80 < 2 * 2 * 32
    png = encode(ramp(400, 300))
    with open_image(png, 32) as img:
        img.load()
        assert img.size == (400, 300)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("L", "JPEG")])
def test_any_image_mode_becomes_rgb(mode, fmt):
    out = load(encode(ramp(60, 40), fmt, mode), 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8


def test_bytes_that_are_not_an_image_raise():
    with pytest.raises(OSError):
        load(b"not an image at all", 32)


def test_a_large_png_takes_an_integer_reduction_first(monkeypatch):
    rng = np.random.default_rng(2)
    data = encode(np.kron(rng.integers(0, 256, (75, 100, 3)), np.ones((8, 8, 1))).astype(np.uint8))  # 800 x 600
    reduced = []
    monkeypatch.setattr(Image.Image, "reduce", lambda self, f, _r=Image.Image.reduce: reduced.append(f) or _r(self, f))
    ours = load(data, 64).astype(int)
    assert reduced == [3]  # 600 / (64 * 3)
    monkeypatch.setattr(transform, "REDUCING_GAP", 1e9)
    assert np.abs(ours - load(data, 64).astype(int)).mean() < 4


def test_augmentations_move_pixels_and_never_change_their_colours():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    colours = sorted(map(tuple, pixels.reshape(3, -1).T))
    for augment, n in ((("flip",), 2), (("rot90",), 4), (("flip", "rot90"), 8), ((), 1)):
        assert transform.variants(augment) == n
        outs = [transform.augmented(pixels, augment, v) for v in range(n)]
        assert np.array_equal(outs[0], pixels)
        assert len({o.tobytes() for o in outs}) == n  # every variant a different image
        for o in outs:
            assert o.shape == pixels.shape and o.flags.c_contiguous
            assert sorted(map(tuple, o.reshape(3, -1).T)) == colours
    assert np.array_equal(transform.augmented(pixels, ("flip",), 1), pixels[:, :, ::-1])
    assert np.array_equal(transform.augmented(pixels, ("rot90",), 3), np.rot90(pixels, 3, axes=(1, 2)))
    assert np.array_equal(
        transform.augmented(pixels, ("flip", "rot90"), 5), np.rot90(pixels, 1, axes=(1, 2))[:, :, ::-1]
    )
