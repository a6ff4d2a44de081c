"""Reference sets: blocklist parsing, eval-folder and earlier-dataset hashes, eager validation."""

import hashlib
import io
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from memfs import clear, upload
from PIL import Image

from pipeline.curate.image_dedup import ImageDedupConfig, dedup_images_pure
from pipeline.curate.image_refs import (
    UNDECODABLE_REFERENCE,
    ReferenceSet,
    RefHash,
    dataset_hashes,
    eval_hashes,
    load_blocklist,
    parquet_hashes,
    reference_sets,
)
from pipeline.fetch.image import image_signals, to_rgb
from pipeline.shard_reader import read_dataset
from pipeline.shards import DatasetWriter
from schemas import SAMPLE_SCHEMA, fields, reasons
from schemas.manifest import SHARDS_DIR
from schemas.records import SCHEMA_VERSION_KEY

SHA = "ab" * 32
BIG_PHASH = 0xF0E1_D2C3_B4A5_9687  # above 2**63: must survive Parquet's uint64 and Python ints intact


def _image_bytes(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def test_blocklist_reads_sha256_and_phash_lines_with_comments(tmp_path):
    path = tmp_path / "block.txt"
    path.write_text(f"# known bad material\n\n{SHA.upper()}\n  f0e1d2c3b4a59687  # a phash\n")
    assert load_blocklist(path) == [
        RefHash(SHA, None, f"sha256:{SHA}"),
        RefHash(None, BIG_PHASH, "phash:f0e1d2c3b4a59687"),
    ]


@pytest.mark.parametrize("bad", ["abc", "zz" * 32, SHA + "00", "0x" + "f" * 16, "f" * 16 + " extra"])
def test_a_malformed_blocklist_line_is_an_error_naming_it(tmp_path, bad):
    path = tmp_path / "block.txt"
    path.write_text(f"# header\n{SHA}\n\n{bad}\n")
    with pytest.raises(ValueError, match=r"block\.txt:4: expected a 64-hex sha256 or a 16-hex phash"):
        load_blocklist(path)
    with pytest.raises(ValueError, match=r"block\.txt:4:"):
        ReferenceSet(reasons.BLOCKLISTED, str(path))  # checked when made, before any pipeline runs


def test_reference_sets_are_validated_when_made(tmp_path):
    with pytest.raises(ValueError, match="reason"):
        ReferenceSet(reasons.DUPLICATE_IMAGE, str(tmp_path))
    with pytest.raises(FileNotFoundError):
        ReferenceSet(reasons.SEEN_BEFORE, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no .* images"):
        ReferenceSet(reasons.EVAL_CONTAMINATION, str(tmp_path))


def test_eval_hashes_cover_every_image_under_the_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    files = {"x.png": _image_bytes(0, "PNG"), "a/y.JPG": _image_bytes(1, "JPEG"), "a/b/z.webp": _image_bytes(2, "WEBP")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "labels.parquet").write_bytes(b"not an image")
    got = {h.detail: h for h in eval_hashes(tmp_path)}
    assert set(got) == set(files)
    for name, data in files.items():
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        assert got[name].sha256 == hashlib.sha256(data).hexdigest()
        assert (got[name].phash, got[name].colour) == image_signals(picture)
        assert (got[name].width, got[name].height) == (48, 40)  # what the veto compares aspect ratios by
    ref = ReferenceSet(reasons.EVAL_CONTAMINATION, str(tmp_path))
    assert len(ref.units()) == 3 and sorted(ref.hashes()) == sorted(got.values())


def test_an_unreadable_eval_image_is_an_error_not_a_hole(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        eval_hashes(tmp_path)


def test_dataset_hashes_read_the_shard_parquets_of_an_earlier_dataset(tmp_path):
    path = tmp_path / "earlier"
    with DatasetWriter(path, samples_per_shard=2) as writer:
        for i in range(3):
            row = {fields.KEY: f"old{i}", fields.URL: f"http://old.test/{i}.png", fields.IMAGE_FORMAT: "png"}
            row |= {fields.SHA256: f"{i:064x}", fields.PHASH: BIG_PHASH - i}
            writer.add(row, _image_bytes(i, "PNG"))
    expected = [RefHash(f"{i:064x}", BIG_PHASH - i, f"earlier/old{i}") for i in range(3)]
    assert sorted(dataset_hashes(path)) == expected
    ref = ReferenceSet(reasons.SEEN_BEFORE, str(path))
    assert len(ref.units()) == 2 and sorted(ref.hashes()) == expected


def test_parquet_hashes_carry_signals_and_set_aside_a_phash_from_schema_1_0(tmp_path):
    row = {name: None for name in SAMPLE_SCHEMA.names} | {
        fields.KEY: "k",
        fields.URL: "http://old.test/k.jpg",
        fields.STATUS: fields.STATUS_SUCCESS,
        fields.SHA256: SHA,
        fields.PHASH: BIG_PHASH,
        fields.ORIGINAL_WIDTH: 640,
        fields.ORIGINAL_HEIGHT: 480,
        fields.COLOUR_SIG: 12345,
    }
    table = pa.Table.from_pylist([row], schema=SAMPLE_SCHEMA)
    pq.write_table(table, tmp_path / "now.parquet")
    assert list(parquet_hashes(tmp_path / "now.parquet", "d")) == [RefHash(SHA, BIG_PHASH, "d/k", 640, 480, 12345)]
    # Written before phash was redefined: its phash (and the colour beside it) cannot be compared; sha256 still can.
    old = table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"1.0"})
    pq.write_table(old, tmp_path / "old.parquet")
    assert list(parquet_hashes(tmp_path / "old.parquet", "d")) == [RefHash(SHA, None, "d/k", 640, 480, None)]


def test_reference_sets_from_the_command_line_options(tmp_path):
    block = tmp_path / "block.txt"
    block.write_text(f"{SHA}\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "0.png").write_bytes(_image_bytes(0, "PNG"))
    refs = reference_sets(exclude_from=[], decontaminate=[str(tmp_path / "eval")], blocklist=[str(block)])
    assert [(r.reason, r.rank) for r in refs] == [(reasons.BLOCKLISTED, 0), (reasons.EVAL_CONTAMINATION, 1)]


def test_reference_sets_read_from_another_filesystem(tmp_path, make_shapes_dataset):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "block.txt").write_text(f"{SHA}\nf0e1d2c3b4a59687\n")
    for name, seed in (("eval/x.png", 0), ("eval/a/y.jpg", 1)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_image_bytes(seed, "PNG" if name.endswith("png") else "JPEG"))
    make_shapes_dataset(tmp_path / "earlier", samples=6, per_shard=4, side=32)
    remote = "memfs://refs"
    try:
        for folder in ("lists", "eval", "earlier"):
            upload(tmp_path / folder, f"{remote}/{folder}")
        local = reference_sets(
            [str(tmp_path / "earlier")], [str(tmp_path / "eval")], [str(tmp_path / "lists/block.txt")]
        )
        there = reference_sets([f"{remote}/earlier"], [f"{remote}/eval"], [f"{remote}/lists/block.txt"])
        for here, away in zip(local, there, strict=True):
            assert len(away.units()) == len(here.units())
            assert sorted(away.hashes(), key=str) == sorted(here.hashes(), key=str)
        assert len(list(there[1].hashes())) == 2 and len(list(there[2].hashes())) == 6
        with pytest.raises(FileNotFoundError, match="no such file or directory"):
            ReferenceSet(reasons.SEEN_BEFORE, f"{remote}/missing")
    finally:
        clear(remote)


def _as_schema_1_0(dataset) -> None:
    """Rewrite a dataset's shard Parquets as one written before phash was redefined, and without the columns."""
    for parquet in sorted((dataset / SHARDS_DIR).glob("*.parquet")):
        table = pq.read_table(parquet).drop_columns([fields.PHASH, fields.COLOUR_SIG])
        pq.write_table(table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"1.0"}), parquet)


def _signals_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return image_signals(to_rgb(img))


def _row(key: str, data: bytes, width: int, height: int) -> dict:
    ph, colour = _signals_of(data)
    sha = hashlib.sha256(data).hexdigest()
    return {fields.KEY: key, fields.URL: f"http://new.test/{key}.png", fields.SHA256: sha, fields.PHASH: ph,
            fields.COLOUR_SIG: colour, fields.ORIGINAL_WIDTH: width, fields.ORIGINAL_HEIGHT: height}  # fmt: skip


def test_an_earlier_dataset_without_usable_phashes_is_hashed_from_its_images(tmp_path, make_shapes_dataset):
    old = make_shapes_dataset(tmp_path / "old", samples=6, per_shard=4, side=72)
    _as_schema_1_0(old)
    stored = {s.key: s.image for s in read_dataset(old)}
    got = {h.detail: (h.phash, h.colour) for h in dataset_hashes(old)}
    assert got == {f"old/{key}": _signals_of(image) for key, image in stored.items()}
    # A near copy (scaled down and re-encoded) of an earlier sample is now excluded, not only a byte-identical one.
    with Image.open(io.BytesIO(stored["shape00003"])) as img:
        copy = img.convert("RGB").resize((60, 60))
    buf = io.BytesIO()
    copy.save(buf, "PNG")
    other = _image_bytes(7, "PNG")  # noise: like no picture of the earlier dataset
    rows = [_row("copy", buf.getvalue(), 60, 60), _row("other", other, 48, 40)]
    result = dedup_images_pure(rows, ImageDedupConfig(), [ReferenceSet(reasons.SEEN_BEFORE, str(old))])
    assert [(r[fields.KEY], r[fields.REASON]) for r in result.rejected] == [("copy", reasons.SEEN_BEFORE)]
    assert [r[fields.KEY] for r in result.kept] == ["other"]
    # Without the tars there is nothing to hash: such rows match on sha256 alone (these record none).
    for tar in (old / SHARDS_DIR).glob("*.tar"):
        tar.unlink()
    assert dataset_hashes(old) == []


def _break_image(tar, key: str) -> None:
    """Rewrite a shard tar with `key`'s image member replaced by bytes that are not an image."""
    with tarfile.open(tar) as f:
        members = [(m, f.extractfile(m).read()) for m in f.getmembers()]
    with tarfile.open(tar, "w") as f:
        for member, data in members:
            if member.name == f"{key}.jpg":
                data = b"not an image"
            member.size = len(data)
            f.addfile(member, io.BytesIO(data))


def test_an_earlier_image_that_does_not_decode_is_left_out_and_counted(tmp_path, make_shapes_dataset):
    old = make_shapes_dataset(tmp_path / "old", samples=4, per_shard=4, side=72)
    _as_schema_1_0(old)
    tar = next((old / SHARDS_DIR).glob("*.tar"))
    _break_image(tar, "shape00001")
    p = TestPipeline(runner="FnApiRunner")
    details = (
        p
        | beam.Create([str(tar.with_suffix(".parquet"))])
        | beam.FlatMap(lambda path: [h.detail for h in parquet_hashes(path, "old")])
    )
    # These rows record no sha256, so the broken one has nothing left to match on.
    assert_that(details, equal_to(["old/shape00000", "old/shape00002", "old/shape00003"]))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name(UNDECODABLE_REFERENCE))["counters"]
    assert [(c.key.metric.namespace, c.committed) for c in counters] == [("image_dedup", 1)]
