"""Rendering of the synthetic pictures: one coloured, textured shape on a background, drawn with numpy and Pillow."""

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synthweb.spec import COLOURS, PIL_FORMATS

# Object radius as a fraction of half the shorter side, per size word used in captions.
_SIZE_FRACTION = {"small": 0.38, "medium": 0.58, "large": 0.82}
# Light, unsaturated tints: a background must never look like one of the object colours.
_GRADIENT_TINTS = ((236, 236, 240), (214, 220, 226), (240, 232, 220), (222, 228, 218), (200, 204, 210))


@dataclass(frozen=True)
class Drawing:
    """One picture, fully described: rendering it twice gives the same pixels."""

    colour: str
    shape: str
    texture: str = "solid"
    background: str = "white"
    size: str = "medium"
    style: str = "photo"  # "photo": a filled, textured object; "sketch": its outline only, on paper
    width: int = 224
    height: int = 224
    seed: int = 0  # position, rotation, shade jitter and noise

    def resized(self, width: int, height: int) -> "Drawing":
        return replace(self, width=width, height=height)


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: tuple[float, ...], start: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = start + rot + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)] * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, (1.0,), math.pi / 4)
    if shape == "triangle":
        return ring(3, (1.0,), -math.pi / 2)
    if shape == "star":
        return ring(5, (1.0, 0.42), -math.pi / 2)
    if shape == "hexagon":
        return ring(6, (1.0,), 0.0)
    if shape == "cross":
        w = 0.34 * r
        local = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, d: Drawing, geom: tuple, fill=None, outline=None, width: int = 1) -> None:
    cx, cy, r, rot = geom
    if d.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(d.shape, cx, cy, r, rot), fill=fill, outline=outline, width=width)


def _background(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        return np.full((h, w, 3), 248 - rng.integers(0, 6), np.uint8)
    if kind == "grey":
        return np.full((h, w, 3), 170 + rng.integers(0, 30), np.uint8)
    if kind == "dark":
        return np.full((h, w, 3), 22 + rng.integers(0, 14), np.uint8)
    if kind == "gradient":
        a, b = (np.array(_GRADIENT_TINTS[i], np.float32) for i in rng.choice(len(_GRADIENT_TINTS), 2, replace=False))
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8)
    if kind == "noise":
        grey = rng.normal(150, 38, size=(h, w, 1)).clip(0, 255)
        return np.repeat(grey.astype(np.uint8), 3, axis=2)
    if kind == "clutter":
        img = Image.new("RGB", (w, h), (205, 205, 205))
        draw = ImageDraw.Draw(img)
        for _ in range(12 + int(rng.integers(0, 10))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            s = rng.uniform(0.04, 0.12) * min(w, h)
            tone = int(rng.integers(60, 150))
            box = (x - s, y - s, x + s, y + s)
            if rng.random() < 0.5:
                draw.rectangle(box, outline=(tone,) * 3, width=2)
            else:
                draw.line(box, fill=(tone,) * 3, width=2)
        return np.asarray(img).copy()
    raise ValueError(f"unknown background {kind!r}")


def _texture(d: Drawing, base: np.ndarray, geom: tuple, box: tuple[int, int, int, int]) -> np.ndarray:
    """The object's fill over `box` (x0, y0, x1, y1) of the canvas: base colour, a darker and a lighter tone.

    Patterns are computed in canvas coordinates, so a crop of the canvas shows the same stripes."""
    x0, y0, x1, y1 = box
    cx, cy, r, _ = geom
    y, x = np.ogrid[y0:y1, x0:x1]
    shape = (y1 - y0, x1 - x0, 3)
    dark, light = base * 0.55, base * 0.45 + 255 * 0.55
    period = max(4, int(r / 3))
    if d.texture == "solid":
        return np.broadcast_to(base, shape)
    if d.texture == "striped":
        on = ((x + y) // period) % 2 == 0
    elif d.texture == "checkered":
        on = ((x // period) + (y // period)) % 2 == 0
    elif d.texture == "dotted":
        s = period
        on = ((x % s - s / 2) ** 2 + (y % s - s / 2) ** 2) > (0.3 * s) ** 2
        return np.where(on[..., None], base, light)
    elif d.texture == "wavy":
        on = np.sin(2 * np.pi * y / period + 3 * np.sin(2 * np.pi * x / (3 * period))) > 0
    elif d.texture == "shaded":
        dist = np.sqrt((x - (cx - r / 3)) ** 2 + (y - (cy - r / 3)) ** 2) / (1.6 * r)
        t = np.clip(dist, 0, 1)[..., None].astype(np.float32)
        return light * (1 - t) + dark * t
    else:
        raise ValueError(f"unknown texture {d.texture!r}")
    return np.where(on[..., None], base, dark)


def render(d: Drawing) -> Image.Image:
    """The picture `d` describes, as an RGB image of d.width x d.height."""
    rng = np.random.default_rng(d.seed)
    w, h = d.width, d.height
    # Layout in relative terms first, so a drawing rendered at two sizes shows the same scene.
    rel_r = _SIZE_FRACTION[d.size] * rng.uniform(0.9, 1.05)
    jx, jy = rng.uniform(-0.5, 0.5, size=2) * (1 - rel_r) * 0.8
    rot = rng.uniform(-0.3, 0.3)
    jitter = rng.integers(-14, 15, size=3)
    r = rel_r * min(w, h) / 2
    geom = (w / 2 + jx * w, h / 2 + jy * h, r, rot)
    base = np.clip(np.array(COLOURS[d.colour]) + jitter, 0, 255).astype(np.float32)

    if d.style == "sketch":
        paper = Image.new("RGB", (w, h), (250, 248, 242))
        draw = ImageDraw.Draw(paper)
        _draw_shape(draw, d, geom, outline=tuple(int(v) for v in base), width=max(2, int(r / 14)))
        return paper
    if d.style != "photo":
        raise ValueError(f"unknown style {d.style!r}")

    canvas = _background(d.background, w, h, rng)
    # Everything below touches only the object's bounding box (plus the shadow's reach): most pixels are background.
    pad = int(r * 0.2) + 4
    x0, y0 = max(0, int(geom[0] - r) - pad), max(0, int(geom[1] - r) - pad)
    x1, y1 = min(w, int(geom[0] + r) + 2 * pad), min(h, int(geom[1] + r) + 2 * pad)
    local = (geom[0] - x0, geom[1] - y0, r, rot)
    bw, bh = x1 - x0, y1 - y0
    region = canvas[y0:y1, x0:x1]
    if rng.random() < 0.5:  # a soft drop shadow, as on product photos
        shadow = Image.new("L", (bw, bh), 0)
        off = max(2, r * 0.08)
        _draw_shape(ImageDraw.Draw(shadow), d, (local[0] + off, local[1] + off, r, rot), fill=110)
        shadow = shadow.filter(ImageFilter.BoxBlur(max(1, r * 0.06)))
        alpha = np.asarray(shadow, np.float32)[..., None] / 255
        region = (region * (1 - alpha)).astype(np.uint8)
    mask = Image.new("L", (bw, bh), 0)
    _draw_shape(ImageDraw.Draw(mask), d, local, fill=255)
    fill = _texture(d, base, geom, (x0, y0, x1, y1))
    canvas[y0:y1, x0:x1] = np.where(np.asarray(mask)[..., None] > 0, fill, region)
    return Image.fromarray(canvas, "RGB")


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encoded bytes of `img` in one of the web's formats (jpg, png, webp, gif); deterministic for fixed inputs."""
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)  # level 1: faster, and no larger on noise
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=1)  # method 1: 2x faster than 4, same size
    elif fmt == "gif":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(buf, "GIF")
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(PIL_FORMATS)}")
    return buf.getvalue()


def near_copy(img: Image.Image, how: str, rng: np.random.Generator) -> Image.Image:
    """A near-duplicate of `img`: the same picture resized or slightly cropped (re-encoding is up to the caller)."""
    w, h = img.size
    if how == "resize":
        s = rng.uniform(0.6, 0.85)
        return img.resize((max(16, round(w * s)), max(16, round(h * s))), Image.Resampling.LANCZOS)
    if how == "crop":
        dx, dy = round(w * rng.uniform(0.02, 0.06)), round(h * rng.uniform(0.02, 0.06))
        return img.crop((dx, dy, w - dx, h - dy))
    if how == "enlarge":
        s = rng.uniform(1.2, 1.6)
        return img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    if how == "requality":
        return img
    raise ValueError(f"unknown near-copy kind {how!r}")
