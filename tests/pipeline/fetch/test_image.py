"""Image stage: bombs, corrupt and truncated bytes, tiny icons, EXIF stripping, resizing, perceptual hashes."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.fetch import image as image_mod
from pipeline.fetch.image import (
    ImageConfig,
    colour_distance,
    colour_signature,
    hamming,
    image_signals,
    phash,
    process_image,
)
from pipeline.rejection import Rejected, rejection_row
from schemas import fields, reasons


def _scene(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like picture: smooth random structure at several scales, which is what pHash is built for."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    return img.filter(ImageFilter.GaussianBlur(2))


def _picture(w: int = 400, h: int = 300, fmt: str = "JPEG", **save) -> bytes:
    img = _scene(w, h)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_bomb(side: int = 30000) -> bytes:
    """A real 1-bit PNG declaring side x side pixels: tiny on disk, gigapixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _reason(data: bytes, cfg: ImageConfig | None = None) -> str:
    with pytest.raises(Rejected) as e:
        process_image(data, cfg or ImageConfig())
    return e.value.reason


def test_keep_ratio_resize_and_metadata():
    data = _picture(800, 600)
    out = process_image(data, ImageConfig(image_size=256))
    assert (out.original_width, out.original_height) == (800, 600)
    assert (out.width, out.height) == (341, 256)
    assert out.ext == "jpg"
    assert Image.open(io.BytesIO(out.data)).size == (341, 256)
    assert len(out.sha256) == 64 and 0 <= out.phash < 2**64
    data = _picture(400, 300)  # not shrunk by a draft decode: the signals are those of the picture as fetched
    out = process_image(data, ImageConfig())
    assert (out.phash, out.colour_sig) == image_signals(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize(("mode", "size"), [("center_crop", (128, 128)), ("border", (128, 128)), ("no", (800, 600))])
def test_resize_modes(mode, size):
    out = process_image(_picture(800, 600), ImageConfig(image_size=128, resize_mode=mode))
    assert (out.width, out.height) == size


def test_small_images_are_not_upscaled_by_default():
    out = process_image(_picture(100, 80), ImageConfig(image_size=256))
    assert (out.width, out.height) == (100, 80)


def test_exif_is_stripped_and_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "SecretCam"  # camera make
    data = _picture(400, 300, exif=exif.tobytes())
    assert b"SecretCam" in data
    out = process_image(data, ImageConfig(resize_mode="no"))
    assert b"SecretCam" not in out.data
    decoded = Image.open(io.BytesIO(out.data))
    assert decoded.size == (300, 400)
    assert not decoded.getexif()


def test_decompression_bomb_refused_before_decoding():
    bomb = _png_bomb()
    assert len(bomb) < 300_000
    assert _reason(bomb) == reasons.TOO_MANY_PIXELS


def test_corrupt_truncated_and_non_images():
    data = _picture(400, 300)
    assert _reason(data[: len(data) // 2]) == reasons.DECODE_ERROR
    assert _reason(data[:20] + bytes(range(256)) * 20) == reasons.DECODE_ERROR
    assert _reason(b"<html><body>not an image</body></html>") == reasons.DECODE_ERROR
    assert _reason(b"") == reasons.DECODE_ERROR


def test_tiny_icons_and_extreme_aspect_ratio():
    assert _reason(_picture(16, 16, "PNG")) == reasons.TOO_SMALL
    assert _reason(_picture(2000, 100, "PNG")) == reasons.BAD_ASPECT_RATIO


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_other_formats_decode(fmt):
    out = process_image(_picture(300, 200, fmt), ImageConfig())
    assert (out.original_width, out.original_height) == (300, 200)


def test_transparent_png_composited_on_white():
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = process_image(buf.getvalue(), ImageConfig(resize_mode="no", encode_format="png"))
    assert Image.open(io.BytesIO(out.data)).getpixel((10, 10)) == (255, 255, 255)


def test_phash_near_duplicates_close_and_different_images_far():
    original = Image.open(io.BytesIO(_picture(640, 480)))
    recoded = Image.open(io.BytesIO(_picture(640, 480, quality=40)))
    smaller = original.resize((320, 240))
    cropped = original.crop((8, 6, 632, 474))
    cropped_3pc = original.crop((19, 14, 621, 466))  # 3% a side: 6 bits with a plain 32x32 thumbnail, 2 here
    other = _scene(640, 480, seed=1)
    h = phash(original)
    assert hamming(h, phash(recoded)) <= 4
    assert hamming(h, phash(smaller)) <= 4
    assert hamming(h, phash(cropped)) <= 4
    assert hamming(h, phash(cropped_3pc)) <= 4
    assert hamming(h, phash(other)) > 16


def test_phash_is_the_dct_of_the_zoom_averaged_tapered_thumbnail():
    # image_signals never builds the thumbnail; this is the computation its operators stand for, spelled out.
    img = _scene(300, 200, seed=3)
    small = np.asarray(img.resize((64, 64), Image.Resampling.LANCZOS, reducing_gap=2.0), np.float64)
    grey = small @ np.array([0.299, 0.587, 0.114])
    thumb = np.mean([z @ grey @ z.T for z in image_mod._ZOOM], axis=0)  # (32, 32)
    window = np.outer(image_mod._WINDOW, image_mod._WINDOW)
    low = (image_mod._DCT32 @ ((thumb - thumb.mean()) * window) @ image_mod._DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low)
    assert phash(img) == sum(1 << (63 - i) for i, bit in enumerate(bits) if bit)
    assert image_mod._zoom_matrix(0.0).sum(axis=1).tolist() == [1.0] * 32  # each sample an average
    assert np.allclose(image_mod._zoom_matrix(0.25).sum(axis=1), 1.0)


def _disc(colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> Image.Image:
    img = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(img).ellipse((100, 50, 200, 150), fill=colour)
    return img


def test_colour_signature_tells_apart_what_the_grey_phash_cannot():
    red, green = _disc((214, 39, 40)), _disc((44, 160, 44))  # about the same grey
    assert hamming(phash(red), phash(green)) <= 4
    assert colour_distance(colour_signature(red), colour_signature(green)) > 3
    buf = io.BytesIO()
    red.save(buf, "JPEG", quality=70)
    recoded = Image.open(buf)
    assert colour_distance(colour_signature(red), colour_signature(recoded)) <= 1
    assert image_signals(red) == (phash(red), colour_signature(red))
    assert 0 <= colour_signature(red) < 2**60  # a non-negative int64: Parquet and Beam store it as it is


def test_colour_distance_is_the_largest_field_difference():
    a = 3 << 55 | 7 << 10 | 1
    assert colour_distance(a, a).item() == 0
    assert colour_distance(a, 5 << 55 | 7 << 10 | 1).item() == 2
    assert colour_distance(np.array([a, 0]), np.array([a ^ (31 << 20), 0])).tolist() == [31, 0]


def test_config_validation():
    with pytest.raises(ValueError, match="resize_mode"):
        ImageConfig(resize_mode="stretch")
    with pytest.raises(ValueError, match="encode_format"):
        ImageConfig(encode_format="bmp")


def test_rejection_row_carries_what_a_retry_needs():
    cand = {fields.KEY: "k1", fields.URL: "http://h/x.jpg", fields.CAPTION: "a cat", fields.SOURCE: "s", "alt": "x"}
    row = rejection_row(cand, reasons.HTTP_4XX, "404")
    assert row[fields.STAGE] == reasons.FETCH and row[fields.REASON] == reasons.HTTP_4XX
    assert row[fields.URL] == "http://h/x.jpg" and row[fields.DETAIL] == "404" and "alt" not in row
    with pytest.raises(ValueError, match="unknown reason"):
        Rejected("made_up")


def test_large_jpeg_decoded_at_reduced_scale_keeps_true_sizes():
    out = process_image(_picture(2000, 1500), ImageConfig(image_size=256))
    assert (out.original_width, out.original_height) == (2000, 1500)
    assert (out.width, out.height) == (341, 256)
    full = process_image(_picture(2000, 1500), ImageConfig(image_size=256, resize_mode="no"))
    assert hamming(out.phash, full.phash) <= 4  # the draft decode sees the same picture


def test_keep_ratio_largest():
    out = process_image(_picture(800, 600), ImageConfig(image_size=200, resize_mode="keep_ratio_largest"))
    assert (out.width, out.height) == (200, 150)


def test_decoder_allowlist_refuses_other_formats():
    assert _reason(_picture(300, 200, "TIFF")) == reasons.DECODE_ERROR
    assert process_image(_picture(300, 200, "BMP"), ImageConfig()).original_width == 300


def test_bomb_is_refused_with_memory_barely_moving():
    """In a fresh process, so the high-water mark of resident memory belongs to this check alone."""
    import subprocess
    import sys

    code = """
import resource, sys
sys.path.insert(0, "tests/pipeline/fetch")
from test_image import _png_bomb
from pipeline.fetch.image import ImageConfig, process_image
from pipeline.rejection import Rejected
bomb = _png_bomb(40000)  # 1.6 gigapixels declared
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    process_image(bomb, ImageConfig())
except Rejected as e:
    print(e.reason, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == reasons.TOO_MANY_PIXELS
    assert int(out[1]) < 20 * 1024  # KiB: decoding it would take over 1.5 GiB
