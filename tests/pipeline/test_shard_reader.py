"""Shard reader and verifier: unsafe members, corruption, verification, schema versions, webdataset and img2dataset."""

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.shard_reader import (
    BAD_METADATA,
    CORRUPT_SHARD,
    DUPLICATE_KEY,
    INVALID_KEY,
    MISSING_FILE,
    MISSING_IMAGE,
    MISSING_ROW,
    MISSING_SAMPLES,
    UNSAFE_MEMBER,
    ReadReport,
    iter_shard,
    list_shards,
    load_manifest,
    read_dataset,
    verify_dataset,
)
from pipeline.shards import DatasetWriter
from schemas import SAMPLE_SCHEMA, DatasetManifest, SchemaVersionError, fields
from schemas.manifest import MANIFEST_NAME, SIZES_NAME
from schemas.records import SCHEMA_VERSION_KEY, conform


def _png(i: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 41 % 256, 120, 30)).save(buf, "PNG")
    return buf.getvalue()


def _row(i: int) -> dict:
    return {fields.KEY: f"s{i:03d}", fields.URL: f"http://img.test/{i}.png", fields.CAPTION: f"shape {i}",
            fields.IMAGE_FORMAT: "png", fields.WIDTH: 8, fields.HEIGHT: 8}  # fmt: skip


def _dataset(root: Path, n: int = 8, per_shard: int = 8) -> Path:
    with DatasetWriter(root, samples_per_shard=per_shard) as writer:
        for i in range(n):
            writer.add(_row(i), _png(i))
    return root


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    return name, data, kind, link


def _craft_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def _good(key: str) -> list[tuple]:
    return [_member(f"{key}.png", _png(len(key))), _member(f"{key}.txt", key.encode())]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_member("../x.png", b"evil"), UNSAFE_MEMBER),
        (_member("/etc/x.png", b"evil"), UNSAFE_MEMBER),
        (_member("sub/x.png", b"evil"), UNSAFE_MEMBER),
        (_member("x..png", b"evil"), UNSAFE_MEMBER),
        (_member("x.png", kind=tarfile.SYMTYPE, link="/etc/passwd"), UNSAFE_MEMBER),
        (_member("x.png", kind=tarfile.LNKTYPE, link="a.png"), UNSAFE_MEMBER),
        (_member("x", kind=tarfile.DIRTYPE), UNSAFE_MEMBER),
        (_member("x.png", kind=tarfile.FIFOTYPE), UNSAFE_MEMBER),
        (_member("x.png", kind=tarfile.CHRTYPE), UNSAFE_MEMBER),
        (_member("noextension", b"data"), UNSAFE_MEMBER),
        (_member("bad key!.png", b"evil"), INVALID_KEY),
    ],
    ids=["dotdot", "absolute", "subdir", "dots", "symlink", "hardlink", "dir", "fifo", "chardev", "noext", "badkey"],
)
def test_unsafe_members_are_refused_and_counted(tmp_path, bad, reason):
    tar = _craft_tar(tmp_path / "00000.tar", _good("a") + [bad] + _good("b"))
    report = ReadReport()
    samples = list(iter_shard(tar, report=report))
    assert [(s.key, s.caption) for s in samples] == [("a", "a"), ("b", "b")]
    assert [(shard, r) for shard, r, _ in report.errors] == [("00000.tar", reason)]
    assert repr(bad[0]) in report.errors[0][2] or reason == INVALID_KEY


def test_img2dataset_layout_with_a_crafted_escape_is_refused(tmp_path):
    _craft_tar(tmp_path / "00000.tar", _good("a") + [_member("../../escape.png", b"x")])
    report = ReadReport()
    assert [s.key for s in read_dataset(tmp_path, report)] == ["a"]
    assert report.errors[0][1] == UNSAFE_MEMBER
    assert not (tmp_path.parent / "escape.png").exists()


def test_missing_image_and_duplicate_key_are_counted_not_yielded(tmp_path):
    members = [_member("a.txt", b"no image"), _member("a.json", b"{}")] + _good("b") + _good("c") + _good("b")
    report = ReadReport()
    assert [s.key for s in iter_shard(_craft_tar(tmp_path / "x.tar", members), report=report)] == ["b", "c"]
    assert [r for _, r, _ in report.errors] == [MISSING_IMAGE, DUPLICATE_KEY]
    assert report.samples == 2


def _member_offsets(tar_path: Path) -> dict[str, int]:
    with tarfile.open(tar_path) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


def test_corrupt_header_skips_the_rest_of_the_shard_with_a_counted_error(tmp_path):
    root = _dataset(tmp_path, n=12, per_shard=6)
    tar = root / "shards" / "00000.tar"
    offset = _member_offsets(tar)["s003.png"]
    raw = bytearray(tar.read_bytes())
    raw[offset : offset + 512] = b"\x7f" * 512  # an unreadable header mid-shard
    tar.write_bytes(bytes(raw))
    report = ReadReport()
    samples = list(read_dataset(root, report))
    # The first shard up to the damage, then all of the second shard.
    assert [s.key for s in samples] == ["s000", "s001", "s002"] + [f"s{i:03d}" for i in range(6, 12)]
    assert [s.image for s in samples[:3]] == [_png(i) for i in range(3)]
    assert [(shard, r) for shard, r, _ in report.errors] == [
        ("00000.tar", CORRUPT_SHARD),
        ("00000.tar", MISSING_SAMPLES),
    ]
    assert "3 Parquet rows" in report.errors[1][2]


@pytest.mark.parametrize("cut", ["mid_image", "mid_header"])
def test_truncated_shard_yields_what_precedes_the_cut(tmp_path, cut):
    root = _dataset(tmp_path, n=6)
    tar = root / "shards" / "00000.tar"
    offset = _member_offsets(tar)["s004.png"] + (tarfile.BLOCKSIZE + 20 if cut == "mid_image" else 100)
    tar.write_bytes(tar.read_bytes()[:offset])
    report = ReadReport()
    samples = list(iter_shard(tar, root / "shards" / "00000.parquet", report))
    assert [s.key for s in samples] == ["s000", "s001", "s002", "s003"]
    assert [s.image for s in samples] == [_png(i) for i in range(4)]
    assert [r for _, r, _ in report.errors] == [CORRUPT_SHARD, MISSING_SAMPLES]
    assert "2 Parquet rows have no sample" in report.errors[1][2]


def test_a_file_that_is_not_a_tar_is_skipped(tmp_path):
    bogus = tmp_path / "00000.tar"
    bogus.write_bytes(b"\x89PNG not a tar at all" * 100)
    report = ReadReport()
    assert list(iter_shard(bogus, report=report)) == []
    assert [r for _, r, _ in report.errors] == [CORRUPT_SHARD]


def test_missing_and_unreadable_files_are_counted(tmp_path):
    root = _dataset(tmp_path, n=4, per_shard=2)
    (root / "shards" / "00000.tar").unlink()
    (root / "shards" / "00001.parquet").write_bytes(b"garbage")
    report = ReadReport()
    samples = list(read_dataset(root, report))
    assert [s.key for s in samples] == ["s002", "s003"]  # rows from the .json members when the Parquet is bad
    assert samples[0].row[fields.URL] == "http://img.test/2.png"
    assert [r for _, r, _ in report.errors] == [MISSING_FILE, BAD_METADATA]


def test_a_sample_without_a_parquet_row_is_not_yielded(tmp_path):
    root = _dataset(tmp_path, n=3)
    parquet = root / "shards" / "00000.parquet"
    table = pq.read_table(parquet)
    pq.write_table(table.slice(1), parquet)
    report = ReadReport()
    assert [s.key for s in iter_shard(root / "shards" / "00000.tar", parquet, report)] == ["s001", "s002"]
    assert [r for _, r, _ in report.errors] == [MISSING_ROW]


def test_json_members_stand_in_for_a_missing_parquet(tmp_path):
    root = _dataset(tmp_path, n=3)
    with_parquet = list(iter_shard(root / "shards" / "00000.tar", root / "shards" / "00000.parquet"))
    without = list(iter_shard(root / "shards" / "00000.tar"))
    assert [s.row for s in without] == [s.row for s in with_parquet]


def _flip_byte(root: Path) -> None:
    tar = root / "shards" / "00000.tar"
    raw = bytearray(tar.read_bytes())
    raw[700] ^= 0xFF
    tar.write_bytes(bytes(raw))


def _rewrite_manifest(root: Path, **changes) -> None:
    manifest = DatasetManifest.from_json((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(dataclasses.replace(manifest, **changes).to_json())


def _wrong_rows(root: Path) -> None:
    manifest = DatasetManifest.from_json((root / MANIFEST_NAME).read_text())
    _rewrite_manifest(root, shards=(dataclasses.replace(manifest.shards[0], rows=99),) + manifest.shards[1:])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_flip_byte, ["shards/00000.tar: sha256 "]),
        (lambda root: (root / "shards" / "00001.parquet").unlink(), ["shards/00001.parquet: missing"]),
        (
            lambda root: (root / "shards" / "00001.tar").write_bytes(b"\0" * 512),
            ["shards/00001.tar: 512 bytes, manifest"],
        ),
        (
            lambda root: (root / SIZES_NAME).write_text('{"00000.tar": 2, "00001.tar": 3}'),
            ["sizes.json: 00001.tar has 3"],
        ),
        (lambda root: (root / SIZES_NAME).unlink(), ["sizes.json: missing"]),
        (_wrong_rows, ["shards/00000.parquet: 2 rows, manifest says 99", "sizes.json: 00000.tar has 2 rows"]),
    ],
    ids=["flipped_byte", "missing_file", "truncated_file", "sizes_disagree", "sizes_missing", "row_count"],
)
def test_verify_detects_damage(tmp_path, damage, expected):
    root = _dataset(tmp_path, n=4, per_shard=2)
    assert verify_dataset(root) == []
    damage(root)
    problems = verify_dataset(root)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problems


def test_unknown_schema_major_version_is_refused(tmp_path):
    root = _dataset(tmp_path, n=2)
    _rewrite_manifest(root, schema_version="2.0")
    with pytest.raises(SchemaVersionError, match="schema_version 2.0 is not supported"):
        list(read_dataset(root))
    with pytest.raises(SchemaVersionError):
        verify_dataset(root)
    # A Parquet shard written under another major is refused too, whoever lists it.
    table = conform([{**_row(0), fields.STATUS: fields.STATUS_SUCCESS}], SAMPLE_SCHEMA)
    future = table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"2.1"})
    pq.write_table(future, root / "shards" / "00000.parquet")
    with pytest.raises(SchemaVersionError):
        list(iter_shard(root / "shards" / "00000.tar", root / "shards" / "00000.parquet"))


def test_a_manifest_pointing_outside_the_dataset_is_refused(tmp_path):
    root = _dataset(tmp_path, n=2)
    manifest = DatasetManifest.from_json((root / MANIFEST_NAME).read_text())
    shard = manifest.shards[0]
    evil = dataclasses.replace(shard, tar=dataclasses.replace(shard.tar, path="../../etc/passwd"))
    _rewrite_manifest(root, shards=(evil,))
    with pytest.raises(ValueError, match="outside the dataset"):
        load_manifest(root)


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset

    root = _dataset(tmp_path, n=7, per_shard=3)
    ours = list(read_dataset(root))
    urls = [str(root / s.tar.path) for s in list_shards(root)]
    theirs = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in theirs] == [s.key for s in ours]
    assert [s["png"] for s in theirs] == [s.image for s in ours]
    assert [s["txt"].decode() for s in theirs] == [s.caption for s in ours]
    assert [json.loads(s["json"]) for s in theirs] == [s.row for s in ours]
