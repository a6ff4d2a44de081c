"""The report's pictures: seeded choice of samples, and small JPEG thumbnails read from the shards for those only."""

import base64
import io
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam

from pipeline.report.stats import sample_hash
from pipeline.shard_reader import iter_shard
from schemas import fields

log = logging.getLogger(__name__)

KEPT_SAMPLES = 48
REJECTED_SAMPLES = 24
THUMB_SIDE = 128
SHARD = "_shard"  # not a schema field: which shard (tar path) a kept row was read from, to fetch its image later


def thumbnail(image: bytes, side: int = THUMB_SIDE, quality: int = 80) -> str | None:
    """A data:image/jpeg;base64 URI of the image fitted into side x side; None if it does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.draft("RGB", (side, side))  # JPEG decodes at a reduced scale: far cheaper for big images
            im = im.convert("RGB")
            im.thumbnail((side, side))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=quality)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("no thumbnail: %s", e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def kept_candidate(row: Mapping[str, Any], seed: int) -> tuple[int, str, str, str | None, int | None, int | None]:
    """(hash, key, shard, caption, width, height): ordered so that the smallest hashes are the chosen samples."""
    key = row[fields.KEY]
    return (
        sample_hash(seed, key),
        key,
        row[SHARD],
        row.get(fields.CAPTION),
        row.get(fields.WIDTH),
        row.get(fields.HEIGHT),
    )


def rejected_candidate(row: Mapping[str, Any], seed: int) -> tuple[int, str, dict]:
    key = row[fields.KEY]
    picked = {
        "key": key,
        "caption": row.get(fields.CAPTION),
        "url": row.get(fields.URL),
        "stage": row.get(fields.STAGE),
        "reason": row.get(fields.REASON),
    }
    return sample_hash(seed, key), key, picked


def wanted_by_shard(chosen: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """[(shard, sorted keys)] from (key, shard) pairs, shards sorted: one read of each shard that holds one."""
    by: dict[str, set[str]] = {}
    for key, shard in chosen:
        by.setdefault(shard, set()).add(key)
    return [(shard, sorted(keys)) for shard, keys in sorted(by.items())]


def shard_thumbnails(tar_path: str, keys: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """(key, thumbnail) for `keys` in one shard tar, stopping once all are found."""
    wanted = set(keys)
    for sample in iter_shard(tar_path):
        if sample.key in wanted:
            wanted.discard(sample.key)
            yield sample.key, thumbnail(sample.image)
            if not wanted:
                return


class ReadThumbnails(beam.DoFn):
    """(tar path, keys) -> (key, thumbnail) for each key found there."""

    def process(self, element: tuple[str, list[str]]) -> Iterator[tuple[str, str | None]]:
        yield from shard_thumbnails(*element)
