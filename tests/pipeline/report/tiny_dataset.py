"""Tiny hand-made datasets for the stats report's tests, every number in them known: a build and a filter of it."""

import io
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipeline.shards import DatasetWriter
from schemas import fields, reasons
from schemas.manifest import BALANCE_COUNTS_NAME
from schemas.records import BALANCE_COUNTS_SCHEMA

CONFIG = {"job": "build", "image_dedup": {"exact": True, "near": True}, "balance": {"t": 3}}


def jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def image(i: int) -> bytes:
    return jpeg((40 * i, 100, 200), (40 + i, 30))


def rejection(key: str, host: str, stage: str, reason: str, detail: str | None = None) -> dict:
    return {
        fields.KEY: key,
        fields.URL: f"http://{host}/{key}.jpg",
        fields.CAPTION: f"caption of {key}",
        fields.STAGE: stage,
        fields.REASON: reason,
        fields.DETAIL: detail,
    }


def write_tiny_dataset(root: Path) -> Path:
    """6 kept (4 from a.test, 2 from b.test; 2 shards), 6 rejected: an exact group of 3 around k0, a near pair
    around k1, a timeout and a boilerplate caption; and balance counts."""
    captions = ["a red circle", "a red circle", "blue star on grey", "x", "green square", "a red circle"]
    with DatasetWriter(root, samples_per_shard=4, config=CONFIG) as w:
        for i, caption in enumerate(captions):
            host = "a.test" if i < 4 else "b.test"
            row = {
                fields.KEY: f"k{i}",
                fields.URL: f"http://{host}/{i}.jpg",
                fields.CAPTION: caption,
                fields.IMAGE_FORMAT: "jpg",
                fields.WIDTH: 40 + i,
                fields.HEIGHT: 30,
                fields.ORIGINAL_WIDTH: 80 + 2 * i,
                fields.ORIGINAL_HEIGHT: 60,
                fields.LANG: "en" if i < 3 else None,
            }
            w.add(row, image(i))
        for row in [
            rejection("d1", "a.test", reasons.DEDUP, reasons.DUPLICATE_IMAGE, "k0"),
            rejection("d2", "b.test", reasons.DEDUP, reasons.DUPLICATE_IMAGE, "k0"),
            rejection("n1", "a.test", reasons.DEDUP, reasons.NEAR_DUPLICATE_IMAGE, "k1"),
            rejection("t1", "b.test", reasons.FETCH, reasons.TIMEOUT),
            rejection("b1", "c.test", reasons.TEXT, reasons.BOILERPLATE),
            rejection("e1", "c.test", reasons.DEDUP, reasons.EVAL_CONTAMINATION, "00001.png"),
        ]:
            w.reject(row)
    table = BALANCE_COUNTS_SCHEMA.empty_table().from_pylist(
        [
            {fields.ENTRY: "red", fields.COUNT_BEFORE: 5, fields.COUNT_AFTER: 3},
            {fields.ENTRY: "star", fields.COUNT_BEFORE: 1, fields.COUNT_AFTER: 1},
            {fields.ENTRY: "zebra", fields.COUNT_BEFORE: 0, fields.COUNT_AFTER: 0},
        ],
        schema=BALANCE_COUNTS_SCHEMA,
    )
    pq.write_table(table, root / BALANCE_COUNTS_NAME)
    return root


FILTER_CONFIG = {"job": "filter", "clip_score": {"min_score": 0.3, "top_fraction": None}, "semdedup": {"eps": 0.05}}
CLIP_SCORES = [0.5, 0.41, 0.35, 0.32]  # of k0..k3, kept; k4 scored under 0.3, k5 is a semantic copy of k0


def write_tiny_filtered(root: Path) -> Path:
    """What `wit filter --min-clip-score 0.3 --semdedup-eps 0.05` could make of the tiny dataset: 4 kept."""
    with DatasetWriter(root, samples_per_shard=4, config=FILTER_CONFIG) as w:
        for i, score in enumerate(CLIP_SCORES):
            row = {
                fields.KEY: f"k{i}",
                fields.URL: f"http://a.test/{i}.jpg",
                fields.CAPTION: "a red circle",
                fields.IMAGE_FORMAT: "jpg",
                fields.WIDTH: 40 + i,
                fields.HEIGHT: 30,
                fields.LANG: "en",
                fields.CLIP_SCORE: score,
                fields.SEM_CLUSTER: 0,
                fields.SEM_GROUP: "k0" if i == 0 else None,
            }
            w.add(row, image(i))
        w.reject(rejection("k4", "b.test", reasons.SCORE, reasons.LOW_CLIP_SCORE, "clip_score 0.1000 < 0.3000"))
        w.reject(rejection("k5", "b.test", reasons.SCORE, reasons.SEMANTIC_DUPLICATE, "k0"))
    return root
