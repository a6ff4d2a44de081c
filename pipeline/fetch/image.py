"""Image stage: decode safely, reject what cannot be used, resize, re-encode without EXIF, hash."""

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.rejection import Rejected
from schemas import reasons

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")  # img2dataset's modes
_ORIENTATION = 0x0112
# Shrinking averages areas (BOX), as img2dataset's default cv2 INTER_AREA does: sharp, alias-free, and 3x faster
# than Lanczos here; enlarging (only with upscale) uses Lanczos.


def _resample(scale: float) -> Image.Resampling:
    return Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS


_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 256  # target of the smaller side (keep_ratio) or of both sides (center_crop, border)
    resize_mode: str = "keep_ratio"
    upscale: bool = False  # small images are kept as they are rather than blown up
    min_side: int = 32  # below this an image is an icon or a tracking pixel, not a training sample
    max_aspect_ratio: float = 10.0
    max_pixels: int = 89_478_485  # Pillow's own bomb threshold; checked before any pixel is decoded
    encode_format: str = "jpg"
    quality: int = 95

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.encode_format not in _FORMATS:
            raise ValueError(f"encode_format must be one of {sorted(_FORMATS)}, got {self.encode_format!r}")
        if self.image_size < 1 or self.min_side < 1 or self.max_pixels < 1:
            raise ValueError("image_size, min_side and max_pixels must be positive")


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # the re-encoded image: no EXIF, no ICC surprises, orientation applied
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str  # of the bytes as fetched: the exact-duplicate and blocklist key
    phash: int  # 64-bit DCT perceptual hash of the decoded original
    colour_sig: int  # its colour signature: what tells apart pictures pHash (grey) confuses


# What we decode at all: every other format Pillow knows is attack surface we do not need.
DECODERS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def open_header(data: bytes, cfg: ImageConfig) -> Image.Image:
    """Parse only the header and judge the declared size: bombs, icons and slivers never get decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=DECODERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected(reasons.TOO_MANY_PIXELS, str(e)[:200]) from None
    except Exception as e:  # Pillow raises many types on hostile input (OSError, SyntaxError, ValueError, ...)
        raise Rejected(reasons.DECODE_ERROR, f"{type(e).__name__}: {e}"[:200]) from None
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise Rejected(reasons.TOO_MANY_PIXELS, f"{w}x{h} declared")
    if min(w, h) < cfg.min_side:
        raise Rejected(reasons.TOO_SMALL, f"{w}x{h}")
    if max(w, h) / min(w, h) > cfg.max_aspect_ratio:
        raise Rejected(reasons.BAD_ASPECT_RATIO, f"{w}x{h}")
    return img


def decode(img: Image.Image, cfg: ImageConfig) -> Image.Image:
    """Decode the pixels; a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale (DCT draft),
    which is most of the speed of a fetcher on 2 cores and changes nothing a 256 px output can show."""
    if img.format == "JPEG" and cfg.resize_mode in ("keep_ratio", "center_crop", "keep_ratio_largest", "border"):
        w, h = img.size
        side = cfg.image_size
        # draft keeps both sides >= the requested box; ask for the box that keeps the side we resize against.
        if cfg.resize_mode in ("keep_ratio", "center_crop"):
            scale = side / min(w, h)
        else:
            scale = side / max(w, h)
        if scale < 0.5:
            img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
    try:
        img.load()
    except Exception as e:
        raise Rejected(reasons.DECODE_ERROR, f"{type(e).__name__}: {e}"[:200]) from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with EXIF orientation applied; transparency composited on white, as a viewer would show it."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _scaled(img: Image.Image, scale: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), _resample(scale))


def resize(img: Image.Image, cfg: ImageConfig) -> Image.Image:
    """img2dataset's resize modes; without `upscale`, images smaller than the target keep their size."""
    w, h = img.size
    size = cfg.image_size
    if cfg.resize_mode == "no":
        return img
    if cfg.resize_mode in ("keep_ratio", "keep_ratio_largest"):
        scale = size / (min(w, h) if cfg.resize_mode == "keep_ratio" else max(w, h))
        return img if scale >= 1 and not cfg.upscale else _scaled(img, scale)
    if cfg.resize_mode == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        return img if side <= size and not cfg.upscale else _scaled(img, size / side)
    # border: fit inside size x size, pad with black as img2dataset does
    scale = min(size / w, size / h)
    if scale < 1 or cfg.upscale:
        img = _scaled(img, scale)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)

# The perceptual hash and the colour signature both look at a zoom-averaged 32x32 thumbnail: the mean of the
# thumbnails of centred crops of 0 to 30% a side. Cropping 2-6% a side stretches what the plain thumbnail shows by up
# to 14%, enough to flip 6-10 of its 64 bits (the small low-frequency coefficients cross the median); the average over
# zooms is a radial blur that keeps the centre and smears the border, so such a crop now moves a few bits
# (benchmarks/near_dup_quality.py measures both).
_SIDE = 64  # the picture is shrunk once to 64x64 (aspect ratio dropped, as pHash's thumbnail always drops it)
_SIDE_GAP = 2.0  # box-reduce to within 2x of 64 before Lanczos: half the time of a gap of 3, as good measured
_THUMB = 32
_ZOOMS = np.linspace(0.0, 0.3, 13)  # crop a side, 2.5% apart
_TAPER = 0.6  # the border of the thumbnail weighs 1 - _TAPER in the hash: crops remove borders first
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, what Pillow's convert("L") uses
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_COLOUR_FIELDS = 12  # (Y, Cb, Cr) of each quadrant of the thumbnail, 5 bits each: 60 bits, a non-negative int64
COLOUR_STEP = 8  # grey levels per step of a colour_signature field


def _zoom_matrix(crop: float) -> np.ndarray:
    """(32, 64): each thumbnail sample is the area mean of its share of the centred window [crop, 1 - crop]."""
    width = _SIDE * (1 - 2 * crop) / _THUMB
    lo = _SIDE * crop + width * np.arange(_THUMB)[:, None]
    src = np.arange(_SIDE)[None, :]
    return np.clip(np.minimum(lo + width, src + 1) - np.maximum(lo, src), 0, None) / width


# The zoom-averaged thumbnail of a 64x64 image X is T = mean_z Z_z X Z_z^T. Neither signal needs T itself: the low
# DCT of the tapered T and the quadrant means of T are linear in X, so each is one small product per zoom.
_ZOOM = np.stack([_zoom_matrix(c) for c in _ZOOMS])  # (Z, 32, 64)
_WINDOW = 1 - _TAPER * (1 - np.sin(np.pi * (np.arange(_THUMB) + 0.5) / _THUMB))  # (32,)
_LOW = np.einsum("ua,a,zap->zup", _DCT32[:8], _WINDOW, _ZOOM)  # (Z, 8, 64): 8 lowest DCT rows of the tapered T
_LOW_OF_ONE = np.outer(_DCT32[:8] @ _WINDOW, _DCT32[:8] @ _WINDOW)  # (8, 8): those coefficients of a constant 1
_HALVES = _ZOOM.reshape(len(_ZOOMS), 2, _THUMB // 2, _SIDE).mean(axis=2)  # (Z, 2, 64): mean of each half of T


def _pooled(ops: np.ndarray, x: np.ndarray) -> np.ndarray:
    """mean over zooms z of ops[z] @ x[..., c] @ ops[z].T for each channel c of x (64, 64, C): (n, n, C)."""
    zooms, n, side = ops.shape
    rows = (ops.reshape(zooms * n, side) @ x.reshape(side, -1)).reshape(zooms, n, side, -1)  # (Z, n, 64, C)
    return np.einsum("zuqc,zvq->uvc", rows, ops) / zooms


def image_signals(img: Image.Image) -> tuple[int, int]:
    """(phash, colour_signature) of a picture, from one 64x64 working copy."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    small = np.asarray(rgb.resize((_SIDE, _SIDE), Image.Resampling.LANCZOS, reducing_gap=_SIDE_GAP), np.float64)
    quadrants = _pooled(_HALVES, small)  # (2, 2, 3): mean RGB of each quadrant of the thumbnail
    # Subtracting the thumbnail's mean before the taper keeps brightness out of the low frequencies.
    low = _pooled(_LOW, (small @ _LUMA)[..., None])[..., 0] - (quadrants @ _LUMA).mean() * _LOW_OF_ONE  # (8, 8)
    bits = low.flatten() > np.median(low)
    ycbcr = quadrants.reshape(4, 3) @ _YCBCR.T + (0, 128, 128)
    steps = np.clip(ycbcr // COLOUR_STEP, 0, 31).astype(np.int64).flatten()
    colour = sum(int(v) << (5 * (_COLOUR_FIELDS - 1 - i)) for i, v in enumerate(steps.tolist()))
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), colour


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (DCT pHash): the 8x8 lowest DCT coefficients of a 32x32 grey thumbnail against their
    median, the thumbnail averaged over centred zooms and tapered towards its border (see _ZOOMS).

    Re-encoding, resizing and mild crops move few bits, so near-duplicates sit within a small Hamming distance.
    """
    return image_signals(img)[0]


def colour_signature(img: Image.Image) -> int:
    """Mean colour (Y, Cb, Cr, 5 bits each) of the four quadrants of the zoom-averaged thumbnail, packed in 60 bits.

    pHash is computed in grey and ignores brightness, so a red and a green disc on one background collide; this is
    what tells them apart (colour_distance) when deduplication verifies a candidate pair."""
    return image_signals(img)[1]


def colour_distance(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Largest difference, in steps of COLOUR_STEP levels, between the fields of two colour signatures (elementwise
    over arrays)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    out = np.zeros(np.broadcast(a, b).shape, np.int64)
    for shift in range(0, 5 * _COLOUR_FIELDS, 5):
        out = np.maximum(out, np.abs((a >> shift & 31) - (b >> shift & 31)))
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def process_image(data: bytes, cfg: ImageConfig) -> ProcessedImage:
    """Decode, judge and re-encode fetched bytes; raises Rejected with an image-stage reason code."""
    img = open_header(data, cfg)
    ow, oh = img.size  # from the header: a draft decode shrinks img.size
    img = decode(img, cfg)
    try:
        if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # displayed rotated by 90 degrees
            ow, oh = oh, ow
        rgb = to_rgb(img)
    except Exception as e:  # a hostile EXIF block is a bad image, not a crash
        raise Rejected(reasons.DECODE_ERROR, f"{type(e).__name__}: {e}"[:200]) from None
    out = resize(rgb, cfg)
    ph, colour = image_signals(rgb)
    buf = io.BytesIO()
    # No exif= and no icc_profile= argument: metadata (GPS, camera serials) does not travel into the dataset.
    out.save(buf, format=_FORMATS[cfg.encode_format], quality=cfg.quality)
    return ProcessedImage(
        data=buf.getvalue(),
        ext=cfg.encode_format,
        width=out.width,
        height=out.height,
        original_width=ow,
        original_height=oh,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=ph,
        colour_sig=colour,
    )
