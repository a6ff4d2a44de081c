"""What a synthetic web is made of: its frozen config and caption deck, the colour x shape classes and held-out ones."""

import random
from dataclasses import asdict, dataclass

# Object colours as drawn (RGB). Backgrounds never use these names, so a caption's colour word always means the object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 205, 25),
    "purple": (128, 60, 170),
    "orange": (250, 130, 14),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SIZES = ("small", "medium", "large")

# What web images and the plain eval set use; the eval_shift sets swap one of these for an unseen alternative.
TEXTURES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("white", "grey", "gradient", "noise")
SHIFT_TEXTURES = ("shaded", "wavy")
SHIFT_BACKGROUNDS = ("dark", "clutter")
SHIFTS = ("background", "texture", "sketch")

IMAGE_FORMATS = ("jpg", "png", "webp", "gif")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}
LANGUAGES = ("en", "fr", "de", "es")


# Caption kinds as recorded in the truth; proportions of one shuffled deck (cycled, so every kind occurs once the
# web has a deck's worth of images).
CAPTION_DECK = (
    ("good", 14),
    ("non_english", 3),
    ("boilerplate", 3),
    ("empty", 2),
    ("mismatch", 3),
)
CAPTION_KINDS = tuple(kind for kind, _ in CAPTION_DECK)


def caption_deck(mix: str | None) -> tuple[tuple[str, int], ...]:
    """The deck a web's alt text is dealt from: CAPTION_DECK, or `mix` ("good=6,boilerplate=6,...": kinds not named
    keep their CAPTION_DECK count) for a web of another noise level."""
    if mix is None:
        return CAPTION_DECK
    counts = dict(CAPTION_DECK)
    for part in filter(None, (p.strip() for p in mix.split(","))):
        kind, _, n = part.partition("=")
        if kind not in counts or not n.isdigit():
            raise ValueError(f"caption_mix: expected kind=count with kind one of {CAPTION_KINDS}, got {part!r}")
        counts[kind] = int(n)
    if not any(counts.values()):
        raise ValueError(f"caption_mix {mix!r} leaves no caption kind")
    return tuple(counts.items())


def class_label(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


@dataclass(frozen=True)
class WebConfig:
    """Everything a synthetic web is generated from; the same config gives byte-identical files."""

    seed: int = 0
    pages: int = 12  # regular HTML pages, spread round-robin over the hosts (each host's first page is "/")
    hosts: int = 3
    images_per_page: int = 8  # on average; fault, duplicate and leak images come on top
    eval_per_class: int = 1  # images per class in eval/ and in each eval_shift/<shift>/
    eval_size: int = 224
    slow_delay: float = 2.0  # seconds the slow URL waits before answering
    retry_after: int = 1  # the Retry-After the 429 URLs send, in seconds
    bomb_side: int = 30000  # declared width and height of the decompression bomb
    # Alt-text kinds dealt per deck, "good=6,boilerplate=6,..." (caption_deck); None: the default deck, and
    # then left out of to_dict so that the default web's files stay as they were.
    caption_mix: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.hosts <= 16:
            raise ValueError(f"hosts must be between 1 and 16, got {self.hosts}")
        if self.pages < max(3, self.hosts):
            raise ValueError(f"pages must be at least 3 and at least the number of hosts, got {self.pages}")
        if not 1 <= self.images_per_page <= 200:
            raise ValueError(f"images_per_page must be between 1 and 200, got {self.images_per_page}")
        if not 1 <= self.eval_per_class <= 1000:
            raise ValueError(f"eval_per_class must be between 1 and 1000, got {self.eval_per_class}")
        if not 32 <= self.eval_size <= 1024:
            raise ValueError(f"eval_size must be between 32 and 1024, got {self.eval_size}")
        if self.slow_delay < 0 or self.retry_after < 0:
            raise ValueError("slow_delay and retry_after must not be negative")
        if self.bomb_side < 10000:  # below this the "bomb" would pass Pillow's 89M-pixel guard
            raise ValueError(f"bomb_side must be at least 10000, got {self.bomb_side}")
        caption_deck(self.caption_mix)  # raises on a bad mix

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["caption_mix"] is None:
            del d["caption_mix"]
        return d


@dataclass(frozen=True)
class Vocabulary:
    """The classes of one web: all colour x shape labels, split into train and held-out by the seed."""

    classes: tuple[str, ...]
    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "textures": list(TEXTURES),
            "backgrounds": list(BACKGROUNDS),
            "shift_textures": list(SHIFT_TEXTURES),
            "shift_backgrounds": list(SHIFT_BACKGROUNDS),
            "shifts": list(SHIFTS),
            "classes": list(self.classes),
            "train": list(self.train),
            "held_out": list(self.held_out),
        }


def vocabulary(seed: int) -> Vocabulary:
    """Hold out one shape per colour along a seeded permutation, so every colour and every shape is still seen in
    training: zero-shot accuracy on the held-out pairs then measures composition, not unseen words."""
    shapes = list(SHAPES)
    random.Random(f"{seed}:held-out").shuffle(shapes)
    held = {class_label(c, s) for c, s in zip(COLOURS, shapes, strict=True)}
    classes = tuple(class_label(c, s) for c in COLOURS for s in SHAPES)
    return Vocabulary(
        classes=classes,
        train=tuple(c for c in classes if c not in held),
        held_out=tuple(c for c in classes if c in held),
    )


def split_label(label: str) -> tuple[str, str]:
    colour, shape = label.split(" ", 1)
    return colour, shape
