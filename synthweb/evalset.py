"""The labelled evaluation set: every class (train and held-out) in eval/, and distribution-shifted copies."""

import random
from dataclasses import asdict
from pathlib import Path

from synthweb.draw import Drawing, encode, render
from synthweb.spec import (
    BACKGROUNDS,
    SHIFT_BACKGROUNDS,
    SHIFT_TEXTURES,
    SHIFTS,
    SIZES,
    TEXTURES,
    Vocabulary,
    WebConfig,
    split_label,
)
from synthweb.truth import EVAL_DIR, EVAL_SHIFT_DIR, LABELS_FILE, LABELS_SCHEMA, write_table


def _drawing(label: str, shift: str | None, size_px: int, rng: random.Random) -> Drawing:
    colour, shape = split_label(label)
    texture, background, style = rng.choice(TEXTURES), rng.choice(BACKGROUNDS), "photo"
    # Each shift changes one factor to something no web image shows, and keeps the rest as in training.
    if shift == "background":
        background = rng.choice(SHIFT_BACKGROUNDS)
    elif shift == "texture":
        texture = rng.choice(SHIFT_TEXTURES)
    elif shift == "sketch":
        texture, background, style = "solid", "white", "sketch"
    return Drawing(
        colour=colour,
        shape=shape,
        texture=texture,
        background=background,
        size=rng.choice(SIZES),
        style=style,
        width=size_px,
        height=size_px,
        seed=rng.getrandbits(32),
    )


def write_eval_sets(out_dir: Path, cfg: WebConfig, vocab: Vocabulary) -> list[dict]:
    """Write eval/ and eval_shift/<shift>/ (PNG images and a labels.parquet in each) and return every row, with the
    image's path under out_dir in `file` and its Drawing in `drawing`, so the web can plant near-copies (leaks)."""
    rng = random.Random(f"{cfg.seed}:eval")
    held = set(vocab.held_out)
    everything = []
    for shift in (None, *SHIFTS):
        folder = EVAL_DIR if shift is None else f"{EVAL_SHIFT_DIR}/{shift}"
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        rows = []
        for label in vocab.classes:
            for _ in range(cfg.eval_per_class):
                d = _drawing(label, shift, cfg.eval_size, rng)
                name = f"{len(rows):05d}.png"
                (out_dir / folder / name).write_bytes(encode(render(d), "png"))
                rows.append(
                    {
                        "path": name,
                        "label": label,
                        "split": "held_out" if label in held else "train",
                        "shift": shift,
                        "file": f"{folder}/{name}",
                        "drawing": d,
                    }
                    | {k: v for k, v in asdict(d).items() if k in ("colour", "shape", "texture", "background", "size")}
                    | {"style": d.style}
                )
        write_table(rows, LABELS_SCHEMA, out_dir / folder / LABELS_FILE)
        everything.extend(rows)
    return everything
