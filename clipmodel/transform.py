"""CLIP image preprocessing with PIL and torch: reduced-scale JPEG decode, shorter side to R, square crop, normalize.

The steps are those of OpenAI CLIP's and open_clip's transform (Resize(R, bicubic), CenterCrop(R) or, for training,
RandomCrop(R), ToTensor, Normalize), done in fewer and faster passes and without torchvision:

- a JPEG stored at least DRAFT_GAP times larger than needed is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself
  (`Image.draft`), as Pillow's own `thumbnail()` does, and the bicubic filter does the rest; other formats that
  large take Pillow's integer `reduce()` first, as its `reducing_gap` does;
- the bicubic resize is torch's antialiased uint8 kernel, which is vectorized (AVX2) and matches PIL's bicubic to
  within one grey level (it is what torchvision's v2 Resize runs on tensors): here it resizes a whole 256 px image
  to 224 px about 1.5x faster than PIL resamples only the crop's box, and 4x faster at 64 px;
- images stay uint8 until a whole batch is converted and normalized in one vectorized step (`normalize`).
"""

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decode a JPEG at reduced scale only while it stays at least this many times the target size: the same margin as
# Pillow's thumbnail(), so the DCT-domain reduction never replaces the bicubic filter's final anti-aliased step.
DRAFT_GAP = 2.0
# Images larger than this many times the target first take an integer box reduction (Pillow's reducing_gap, whose
# documentation finds 3.0 indistinguishable from a full resample). Matters for large PNG/WebP, which have no draft.
REDUCING_GAP = 3.0
# (x / 255 - mean) / std as one multiply-add per element.
_SCALE = torch.tensor([1 / (255 * s) for s in CLIP_STD], dtype=torch.float32).view(1, 3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)], dtype=torch.float32).view(1, 3, 1, 1)


def open_image(data: bytes, resolution: int) -> Image.Image:
    """Open encoded image bytes, asking libjpeg for a reduced-scale decode when the JPEG is large; not yet decoded.

    Raises what PIL raises for bytes that are not an image (PIL.UnidentifiedImageError, an OSError).
    """
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        w, h = img.size
        k = DRAFT_GAP * resolution / min(w, h)
        if k <= 0.5:  # libjpeg scales by 1/2, 1/4 or 1/8: anything less cannot help
            img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
    return img


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(width, height) with the shorter side at R and the aspect ratio kept, as torchvision's Resize(R) makes it."""
    w, h = size
    if w <= h:
        return resolution, max(resolution, int(resolution * h / w))
    return max(resolution, int(resolution * w / h)), resolution


def crop_offset(size: tuple[int, int], resolution: int, crop: tuple[float, float] | None = None) -> tuple[int, int]:
    """(left, top) of the R x R crop of an image of `size` (already resized): RandomCrop's place for `crop` = (fx, fy)
    in [0, 1), CenterCrop's (rounded as torchvision rounds it) for None."""
    spare_x, spare_y = size[0] - resolution, size[1] - resolution
    if crop is None:
        return round(spare_x / 2), round(spare_y / 2)
    return min(int(crop[0] * (spare_x + 1)), spare_x), min(int(crop[1] * (spare_y + 1)), spare_y)


def preprocess(img: Image.Image, resolution: int, crop: tuple[float, float] | None = None) -> np.ndarray:
    """(3, R, R) uint8 RGB: `img` with its shorter side scaled to R (bicubic, antialiased), then cropped square.

    Channels first, as the resize leaves them: copying it into a batch and normalizing then need no transpose.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    factor = int(min(img.size) / (resolution * REDUCING_GAP))
    if factor >= 2:
        img = img.reduce(factor)
    w, h = resized_size(img.size, resolution)
    with warnings.catch_warnings():  # read-only pixels are fine: interpolate only reads them
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None]  # (1, 3, H, W), channels-last in memory
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True)  # (1, 3, h, w) uint8
    left, top = crop_offset((w, h), resolution, crop)
    return x[0, :, top : top + resolution, left : left + resolution].numpy()  # (3, R, R)


def load(data: bytes, resolution: int, crop: tuple[float, float] | None = None) -> np.ndarray:
    """Encoded image bytes to (3, R, R) uint8: `open_image` then `preprocess`."""
    with open_image(data, resolution) as img:
        return preprocess(img, resolution, crop)


def variants(augment: tuple[str, ...]) -> int:
    """How many distinct images `augmented` makes of one: 2 with a flip, 4 with quarter turns, 8 with both."""
    return (2 if "flip" in augment else 1) * (4 if "rot90" in augment else 1)


def augmented(pixels: np.ndarray, augment: tuple[str, ...], variant: int) -> np.ndarray:
    """(3, R, R) uint8 pixels as variant `variant` (0 <= variant < variants(augment)) of the training augmentations:
    "rot90" turns by variant % 4 quarter turns, "flip" then mirrors left-right. Variant 0 is the image as it is.

    Neither changes a pixel's colour, only where it is: safe for captions that name colours (colour jitter is not).
    "flip" suits photos (a caption rarely says left or right); "rot90" only pictures with no up, such as the
    synthetic web's shapes, which are drawn at random rotations anyway."""
    turns = variant % 4 if "rot90" in augment else 0
    mirror = "flip" in augment and (variant // (4 if "rot90" in augment else 1)) % 2 == 1
    if turns:
        pixels = np.rot90(pixels, turns, axes=(1, 2))  # (3, R, R), square so the shape holds
    if mirror:
        pixels = pixels[:, :, ::-1]  # (3, R, R)
    return np.ascontiguousarray(pixels) if turns or mirror else pixels


def normalize(images: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, R, R) uint8 to (B, 3, R, R) float32 normalized with CLIP's mean and std, into `out` if given.

    Three passes over the batch (convert, multiply, add), instead of a float tensor per image and a stack.
    """
    if not images.flags.writeable:  # np.asarray(PIL image) is read-only, which torch warns about
        images = images.copy()
    x = torch.from_numpy(images)  # (B, 3, R, R) uint8
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32)  # (B, 3, R, R)
    out.copy_(x)
    return out.mul_(_SCALE).add_(_SHIFT)  # (B, 3, R, R)


def image_tensor(img: Image.Image, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 for one PIL image, centre crop: the evaluation transform, for encoders and zero-shot."""
    return normalize(preprocess(img, resolution)[None])[0]
