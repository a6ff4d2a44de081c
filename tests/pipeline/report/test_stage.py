"""DatasetStats on a hand-made dataset whose every number is known: the transform's wiring, in a TestPipeline."""

import base64
import io
from pathlib import Path

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from PIL import Image

from pipeline.report.samples import SHARD, kept_candidate, shard_thumbnails, thumbnail, wanted_by_shard
from pipeline.report.stage import DatasetStats
from pipeline.report.stats import sample_hash
from pipeline.shard_reader import load_manifest
from schemas import reasons
from tests.pipeline.report.tiny_dataset import image, jpeg, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "dataset")


def _colour(uri: str) -> tuple[int, ...]:
    """The colour at the middle of a thumbnail data URI (the tiny dataset's pictures are flat colours)."""
    im = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/jpeg;base64,"))))
    return im.convert("RGB").getpixel((im.width // 2, im.height // 2))


def check_tiny(out: list[dict]) -> None:
    [s] = out
    assert s["format"] == "wit-builder-stats" and s["dataset"]["rows"] == 6 and s["dataset"]["shards"] == 2
    assert s["funnel"]["candidates"] == 12 and s["funnel"]["kept"] == 6
    assert [st["stage"] for st in s["funnel"]["stages"]] == [reasons.TEXT, reasons.DEDUP, reasons.FETCH]
    cap = s["captions"]
    assert cap["top_captions"][0] == {"value": "a red circle", "count": 3, "share": 0.5}
    assert cap["top_tokens"][:2] == [
        {"value": "a", "count": 3, "share": 3 / 16},
        {"value": "circle", "count": 3, "share": 3 / 16},
    ]
    assert cap["languages"] == [{"value": "en", "count": 3, "share": 0.5}, {"value": "none", "count": 3, "share": 0.5}]
    assert cap["boilerplate_share"] == 1 / 12
    assert cap["words"]["count"] == 6 and cap["words"]["sum"] == 3 + 3 + 4 + 1 + 2 + 3
    img = s["images"]
    assert img["original_width"]["min"] == 80 and img["original_width"]["max"] == 90
    assert img["bytes"]["sum"] == sum(len(image(i)) for i in range(6)) and img["formats"] == [
        {"value": "jpg", "count": 6, "share": 1.0}
    ]
    src = s["sources"]
    assert src["domains"] == 3
    assert src["top"] == [
        {"domain": "a.test", "kept": 4, "rejected": 2, "fetch_failures": 0},
        {"domain": "b.test", "kept": 2, "rejected": 2, "fetch_failures": 1},
        {"domain": "c.test", "kept": 0, "rejected": 2, "fetch_failures": 0},
    ]
    assert src["fetch_outcomes"][1] == {"host": "b.test", "kept": 2, "reasons": {reasons.TIMEOUT: 1}}
    assert src["gini"] == pytest.approx(1 / 6) and src["top1pct_share"] == 4 / 6
    dup = s["duplicates"]
    assert (dup["exact"]["groups"], dup["exact"]["removed"], dup["exact"]["sizes"]["max"]) == (1, 2, 3)
    assert (dup["near"]["groups"], dup["near"]["removed"]) == (1, 1) and dup["semantic"] is None
    assert dup["eval_contamination"] == 1
    exact, near = dup["examples"]
    assert (
        exact["kind"] == "exact" and exact["survivor"]["key"] == "k0" and exact["survivor"]["caption"] == "a red circle"
    )
    assert _colour(exact["survivor"]["thumb"]) == pytest.approx((0, 100, 200), abs=8)  # k0's own picture
    assert [m["key"] for m in exact["members"]] == ["d1", "d2"] and near["members"][0]["url"] == "http://a.test/n1.jpg"
    b = s["balance"]
    assert (b["t"], b["entries"], b["matched_entries_before"], b["curve_after"]) == (3, 3, 2, [[1, 3], [2, 1]])
    assert b["no_match_share"] == 0.0 and s["scores"] is None
    samples = s["samples"]
    assert sorted(x["key"] for x in samples["kept"]) == [f"k{i}" for i in range(6)]
    for x in samples["kept"]:
        assert _colour(x["thumb"]) == pytest.approx((40 * int(x["key"][1:]), 100, 200), abs=8)
    assert len(samples["rejected"]) == 6 and {"key", "caption", "url", "stage", "reason"} == set(samples["rejected"][0])
    assert s["summary"]["rejected.dedup.duplicate_image"] == 2 and s["summary"]["lang_share.en"] == 0.5


def test_dataset_stats_transform(tiny: Path) -> None:
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | DatasetStats(str(tiny), load_manifest(tiny), seed=0)
        assert_that(out, check_tiny)


def test_thumbnails_are_small_jpegs(tiny: Path) -> None:
    big = jpeg((10, 20, 30), (600, 300))
    uri = thumbnail(big)
    image = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/jpeg;base64,"))))
    assert image.format == "JPEG" and image.size == (128, 64)
    assert thumbnail(b"not an image") is None
    assert wanted_by_shard([("k2", "s1"), ("k1", "s0"), ("k0", "s1")]) == [("s0", ["k1"]), ("s1", ["k0", "k2"])]
    tar = str(tiny / "shards" / "00000.tar")
    assert [k for k, _ in shard_thumbnails(tar, ["k3", "k1", "absent"])] == ["k1", "k3"]


def test_sample_choice_is_seeded_and_deterministic() -> None:
    rows = [{"key": f"k{i}", SHARD: "s", "caption": None, "width": 1, "height": 1} for i in range(200)]
    pick = lambda seed: [c[1] for c in sorted(kept_candidate(r, seed) for r in rows)[:48]]  # noqa: E731
    assert pick(0) == pick(0) != pick(1)
    assert pick(0)[0] == min((r["key"] for r in rows), key=lambda k: sample_hash(0, k))
