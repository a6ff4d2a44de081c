"""The builder a synthetic web is planned with: routes, files, truth rows, pictures and their captions."""

import hashlib
import random
from collections import Counter, deque
from pathlib import Path

from PIL import Image

from synthweb import faults as flt
from synthweb.captions import CaptionWriter
from synthweb.draw import Drawing, encode
from synthweb.site import Block, Page
from synthweb.spec import (
    BACKGROUNDS,
    CONTENT_TYPES,
    SIZES,
    TEXTURES,
    Vocabulary,
    WebConfig,
    caption_deck,
    class_label,
    split_label,
)
from synthweb.truth import empty_truth_row

_FORMAT_WEIGHTS = {"jpg": 5, "png": 2, "webp": 2, "gif": 1}
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (16, 9), (2, 3))
_FOLDERS = ("/img", "/uploads/20{yy}/{mm:02d}", "/media", "/static/images")
_LARGE_EVERY = 40  # one image in this many is 1000-2000 px: realistic, but they dominate generation time


class WebBuilder:
    """Accumulates routes (what the server answers), files and truth rows while the web is planned."""

    def __init__(self, out: Path, cfg: WebConfig, vocab: Vocabulary):
        self.out, self.cfg, self.vocab = out, cfg, vocab
        self.rng = random.Random(f"{cfg.seed}:web")
        self.captions = CaptionWriter(random.Random(f"{cfg.seed}:captions"), caption_deck(cfg.caption_mix))
        self.rows: dict[str, dict] = {}
        self.routes: list[dict] = []
        self.paths: set[tuple[int, str]] = set()
        self.recent: deque = deque(maxlen=24)  # (row id, picture, format) candidates for duplicates
        self.groups: Counter = Counter()
        self.n_pictures = 0
        self.n_images = 0

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def group(self, prefix: str) -> str:
        self.groups[prefix] += 1
        return f"{prefix}-{self.groups[prefix] - 1:03d}"

    def route(self, host: int, path: str, *, body: bytes | None, ctype: str, status: int = 200, **extra) -> None:
        file = None
        if body is not None:
            file = f"hosts/{host}/{path.lstrip('/') or 'index.html'}"
            target = self.out / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        route = {"host": host, "path": path, "file": file, "status": status, "type": ctype}
        route.update({"headers": [], "delay": 0.0, "throttle": 0, "template": False} | extra)
        # A Location naming another host holds a placeholder too.
        route["template"] = route["template"] or any("{{host" in value for _, value in route["headers"])
        self.routes.append(route)

    def row(self, host: int, path: str, kind: str = "image", **values) -> dict:
        if (host, path) in self.paths:
            raise AssertionError(f"path planned twice: {host} {path}")
        self.paths.add((host, path))
        row = empty_truth_row() | {"host": host, "path": path, "kind": kind, "fault": "none", "status": 200}
        row.update(values)
        if not row["id"]:
            row["id"] = f"img-{self.n_images:05d}"
            self.n_images += 1
        row["expected"] = flt.FAULTS[row["fault"]][0]
        self.rows[row["id"]] = row
        return row

    def path(self, host: int, ext: str, folder: str | None = None) -> str:
        while True:
            folder_ = folder or self.rng.choice(_FOLDERS).format(
                yy=self.rng.randrange(15, 24), mm=self.rng.randrange(1, 13)
            )
            n = self.rng.randrange(10000)
            stem = self.rng.choice((f"{self.rng.getrandbits(32):08x}", f"IMG_{n:04d}", f"photo-{n:04d}", f"pic{n}"))
            if ext == "jpg" and self.rng.random() < 0.2:
                ext = "jpeg"
            candidate = f"{folder_}/{stem}.{ext}"
            if (host, candidate) not in self.paths:
                return candidate

    # -- pictures ---------------------------------------------------------------------------------------------------
    def drawing(self, width: int, height: int, label: str | None = None) -> Drawing:
        colour, shape = split_label(label or self.rng.choice(self.vocab.train))
        return Drawing(
            colour=colour,
            shape=shape,
            texture=self.rng.choice(TEXTURES),
            background=self.rng.choice(BACKGROUNDS),
            size=self.rng.choice(SIZES),
            width=width,
            height=height,
            seed=self.rng.getrandbits(32),
        )

    def dims(self) -> tuple[int, int, bool]:
        self.n_pictures += 1
        large = self.n_pictures % _LARGE_EVERY == _LARGE_EVERY // 2
        if large:
            long = self.rng.randrange(1000, 2001)
        elif self.rng.random() < 0.1:
            long = self.rng.randrange(100, 200)
        else:
            long = self.rng.randrange(200, 801)
        aw, ah = self.rng.choice(ASPECTS)
        if aw >= ah:
            return long, round(long * ah / aw), large
        return round(long * aw / ah), long, large

    def fmt(self) -> str:
        return self.rng.choices(list(_FORMAT_WEIGHTS), weights=list(_FORMAT_WEIGHTS.values()))[0]

    @staticmethod
    def picture_values(d: Drawing | None, img: Image.Image | None, fmt: str | None, data: bytes) -> dict:
        values = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "format": fmt}
        if d is not None:
            values.update(label=class_label(d.colour, d.shape), colour=d.colour, shape=d.shape, texture=d.texture)
            values.update(background=d.background, size=d.size)
        if img is not None:
            values.update(width=img.width, height=img.height)
        return values

    def serve_picture(
        self, host: int, path: str, d: Drawing, img: Image.Image, fmt: str, route: dict | None = None, **values
    ) -> dict:
        """Encode, write and route a picture; `route` overrides how it is served (faults), which also keeps it out of
        the duplicate candidates."""
        route = route or {}
        data = route.pop("body", None) or encode(img, fmt, self.rng.randrange(70, 96))
        ctype = route.pop("ctype", CONTENT_TYPES[fmt])
        self.route(host, path, body=data, ctype=ctype, **route)
        row = self.row(host, path, content_type=ctype, **self.picture_values(d, img, fmt, data) | values)
        if values.get("fault", "none") == "none":
            self.recent.append((row["id"], img, fmt))
        return row

    # -- captions ---------------------------------------------------------------------------------------------------
    def caption(self, d: Drawing, page_lang: str) -> dict:
        """Alt text for a picture of `d`, of the next kind in the deck, as truth values."""
        kind = self.captions.next_kind()
        label = class_label(d.colour, d.shape)
        values = {"caption_kind": kind, "caption_label": label, "lang": "en", "has_alt": True, "title": None}
        if kind == "good":
            values["caption"] = self.captions.english(d.colour, d.shape, d.texture, d.background, d.size)
            if self.rng.random() < 0.3:
                values["title"] = self.captions.title(d.colour, d.shape)
        elif kind == "non_english":
            lang = page_lang if page_lang != "en" else self.rng.choice(("fr", "de", "es"))
            values.update(caption=self.captions.foreign(d.colour, d.shape, lang), lang=lang)
        elif kind == "mismatch":
            # A caption about another (train) class: never a held-out one, so held-out words stay off the web.
            other = self.rng.choice([c for c in self.vocab.train if c != label])
            o = self.drawing(d.width, d.height, other)
            values.update(caption=self.captions.english(o.colour, o.shape, o.texture, o.background, o.size))
            values["caption_label"] = other
        else:
            values.update(caption_label=None, lang=None)
            if kind == "boilerplate":
                values["caption"] = self.captions.boilerplate()
            else:
                values.update(caption="", has_alt=self.rng.random() < 0.5)
        return values

    def good_caption(self, d: Drawing) -> dict:
        text = self.captions.english(d.colour, d.shape, d.texture, d.background, d.size)
        label = class_label(d.colour, d.shape)
        return {"caption": text, "caption_kind": "good", "caption_label": label, "lang": "en", "has_alt": True}

    @staticmethod
    def block(kind: str, row: dict, page: Page, **extra) -> Block:
        return Block(
            kind=kind,
            src=row["id"],
            alt=row["caption"],
            has_alt=row["has_alt"] is not False,
            title=row["title"],
            figcaption=row["figcaption"],
            style="rel" if page.base else None,
            **extra,
        )
