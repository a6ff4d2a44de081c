"""Shard writer: round trip, byte-identical rewrites, atomicity under SIGKILL, key safety, manifest and funnel."""

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.shard_reader import read_dataset, verify_dataset
from pipeline.shards import (
    KEPT,
    TAR_MODE,
    TAR_MTIME,
    TMP_SUFFIX,
    DatasetWriter,
    carry_files,
    finalize_dataset,
    renumber_shards,
    write_rejections,
    write_shard,
)
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, DatasetManifest, empty_row, fields, reasons
from schemas.manifest import MANIFEST_NAME, REJECTED_DIR, SHARDS_DIR, SIZES_NAME

REPO = Path(__file__).resolve().parents[2]


def _image(i: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 37 % 256, 90, 200)).save(buf, {"jpg": "JPEG", "png": "PNG"}[fmt])
    return buf.getvalue()


def _row(key: str, i: int, fmt: str = "png") -> dict:
    return {
        fields.KEY: key,
        fields.URL: f"http://img.test/{key}.{fmt}",
        fields.CAPTION: f"a red circle number {i} – ünïcode",
        fields.SOURCE: "urls:test.parquet",
        fields.SOURCE_ROW: i,
        fields.IMAGE_FORMAT: fmt,
        fields.WIDTH: 8,
        fields.HEIGHT: 8,
        fields.LANG: "en",
        fields.LANG_SCORE: 0.5,  # exact in float32, so it compares equal after the round trip
        fields.PHASH: 2**63 + i,  # top bit set: must survive as unsigned
        fields.MATCHED_ENTRIES: ["red", "circle"],
    }


def _records(n: int) -> list[tuple[dict, bytes]]:
    out = []
    for i in range(n):
        fmt = "png" if i % 2 else "jpg"
        out.append((_row(f"k{i:03d}", i, fmt), _image(i, fmt)))
    return out


def _rejection(key: str, reason: str = reasons.TOO_SHORT, stage: str = reasons.TEXT) -> dict:
    return {fields.KEY: key, fields.URL: f"http://img.test/{key}", fields.STAGE: stage, fields.REASON: reason}


def _expected_row(row: dict, image: bytes) -> dict:
    return {**empty_row(SAMPLE_SCHEMA), **row, fields.STATUS: fields.STATUS_SUCCESS, fields.BYTES: len(image)}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_write_read_round_trip(tmp_path):
    records = _records(10)
    with DatasetWriter(tmp_path, samples_per_shard=4, config={"seed": 3}) as writer:
        for row, image in records:
            writer.add(row, image)
        writer.reject(_rejection("r1"))
        writer.count(reasons.FETCH, KEPT, 11)
    samples = list(read_dataset(tmp_path))
    assert [s.key for s in samples] == [row[fields.KEY] for row, _ in records]
    assert [s.image for s in samples] == [image for _, image in records]
    assert [s.caption for s in samples] == [row[fields.CAPTION] for row, _ in records]
    assert [s.image_ext for s in samples] == [row[fields.IMAGE_FORMAT] for row, _ in records]
    assert [s.row for s in samples] == [_expected_row(row, image) for row, image in records]

    manifest = DatasetManifest.from_json((tmp_path / MANIFEST_NAME).read_text())
    assert manifest == writer.manifest
    assert [(s.name, s.rows) for s in manifest.shards] == [("00000", 4), ("00001", 4), ("00002", 2)]
    assert manifest.counts == {"fetch": {"kept": 11}, "shards": {"kept": 10}, "text": {"too_short": 1}}
    assert manifest.config == {"seed": 3}
    assert json.loads((tmp_path / SIZES_NAME).read_text()) == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 2}
    # open_clip reads sizes.json from the folder of the tars
    assert (tmp_path / SHARDS_DIR / SIZES_NAME).read_bytes() == (tmp_path / SIZES_NAME).read_bytes()
    rejected = pq.read_table(tmp_path / REJECTED_DIR / "00000.parquet")
    assert rejected.schema.equals(REJECTION_SCHEMA)
    assert rejected.to_pylist() == [{**empty_row(REJECTION_SCHEMA), **_rejection("r1")}]
    assert verify_dataset(tmp_path) == []


def test_tar_layout_is_fixed_and_json_member_matches_parquet(tmp_path):
    records = _records(3)
    entry = write_shard(tmp_path, 0, reversed(records))
    raw = (tmp_path / entry.tar.path).read_bytes()
    with tarfile.open(tmp_path / entry.tar.path) as tar:
        members = tar.getmembers()
        # Plain ustar: every header carries the POSIX magic, and no PAX or GNU extension header precedes one.
        assert all(raw[m.offset + 257 : m.offset + 265] == b"ustar\x0000" for m in members)
        assert all(m.offset_data - m.offset == tarfile.BLOCKSIZE for m in members)
        assert [m.name for m in members] == [
            name
            for i in range(3)
            for name in (f"k00{i}.{'jpg' if i % 2 == 0 else 'png'}", f"k00{i}.txt", f"k00{i}.json")
        ]
        assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.type) for m in members} == {
            (TAR_MTIME, TAR_MODE, 0, 0, "", "", tarfile.REGTYPE)
        }
        json_rows = [json.loads(tar.extractfile(m).read()) for m in members if m.name.endswith(".json")]
    parquet_rows = pq.read_table(tmp_path / entry.parquet.path).to_pylist()
    assert json_rows == parquet_rows
    assert [r[fields.KEY] for r in parquet_rows] == ["k000", "k001", "k002"]
    assert entry.tar.sha256 == hashlib.sha256((tmp_path / entry.tar.path).read_bytes()).hexdigest()
    assert entry.parquet.bytes == (tmp_path / entry.parquet.path).stat().st_size


def _write_low_level(root: Path, records: list, rejections: list, seed: int) -> None:
    """Write as a Beam job would: shards and rejection parts in any order, each one's rows in any order."""
    rng = random.Random(seed)
    chunks = [records[i : i + 4] for i in range(0, len(records), 4)]
    jobs = list(enumerate(chunks))
    rng.shuffle(jobs)
    shards = [write_shard(root, index, rng.sample(chunk, len(chunk))) for index, chunk in jobs]
    parts = [write_rejections(root, part, rng.sample(rejections, len(rejections))) for part in ("b", "a")]
    counts = {reasons.TEXT: {reasons.TOO_SHORT: 3, KEPT: 10}, reasons.FETCH: {KEPT: 10}}
    if seed % 2:
        counts = dict(reversed(list(counts.items())))
    finalize_dataset(root, rng.sample(shards, len(shards)), parts, counts, {"b": 1, "a": [1, 2]})


def test_rewrite_is_byte_identical_whatever_the_order(tmp_path):
    records = _records(10)
    rejections = [_rejection(f"r{i}") for i in range(3)]
    _write_low_level(tmp_path / "one", records, rejections, seed=1)
    _write_low_level(tmp_path / "two", records, rejections, seed=2)
    one, two = _digests(tmp_path / "one"), _digests(tmp_path / "two")
    assert sorted(one) == sorted(
        [
            MANIFEST_NAME,
            SIZES_NAME,
            f"{SHARDS_DIR}/{SIZES_NAME}",
            f"{REJECTED_DIR}/a.parquet",
            f"{REJECTED_DIR}/b.parquet",
        ]
        + [f"{SHARDS_DIR}/0000{i}.{ext}" for i in range(3) for ext in ("tar", "parquet")]
    )
    assert one == two
    # The single-process writer too: one shard's worth of records in two orders.
    for name, order in (("w1", records), ("w2", records[::-1])):
        with DatasetWriter(tmp_path / name, samples_per_shard=100) as writer:
            for row, image in order:
                writer.add(row, image)
    assert _digests(tmp_path / "w1") == _digests(tmp_path / "w2")


@pytest.mark.parametrize("key", ["../x", "a b", "", "a/b", "a.b", "x" * 65, None, 7])
def test_invalid_key_is_refused(tmp_path, key):
    row, image = _records(1)[0]
    bad = {**row, fields.KEY: key}
    with pytest.raises(ValueError, match="invalid sample key"):
        write_shard(tmp_path, 0, [(bad, image)])
    with pytest.raises(ValueError, match="invalid sample key"), DatasetWriter(tmp_path / "w") as writer:
        writer.add(bad, image)
    assert not (tmp_path / "w" / MANIFEST_NAME).exists()


def test_duplicate_key_in_a_shard_is_an_error(tmp_path):
    records = _records(3)
    with pytest.raises(ValueError, match="duplicate sample key 'k001'"):
        write_shard(tmp_path, 0, records + [records[1]])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({fields.IMAGE_FORMAT: "gif"}, "image_format 'gif' is not one of"),
        ({fields.IMAGE_FORMAT: None}, "image_format None is not one of"),
        ({fields.BYTES: 1}, "bytes is 1, but the shard stores"),
        ({fields.STATUS: "failed"}, "status is 'failed'"),
        ({"colour": "red"}, "fields not in schema"),
    ],
)
def test_bad_sample_rows_are_refused(tmp_path, change, message):
    row, image = _records(1)[0]
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path, 0, [({**row, **change}, image)])


def test_unknown_stage_or_reason_is_refused(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="unknown reason code 'too_shrot'"):
            writer.reject(_rejection("r1", reason="too_shrot"))
        with pytest.raises(ValueError, match="unknown stage 'txet'"):
            writer.count("txet", KEPT)
    with pytest.raises(ValueError, match="unknown reason code"):
        write_rejections(tmp_path, "00000", [_rejection("r1", reason="nope")])


def test_nan_score_is_null_in_the_json_member(tmp_path):
    row, image = _records(1)[0]
    entry = write_shard(tmp_path, 0, [({**row, fields.LANG_SCORE: float("nan")}, image)])
    with tarfile.open(tmp_path / entry.tar.path) as tar:
        meta = json.loads(tar.extractfile(f"{row[fields.KEY]}.json").read())
    assert meta[fields.LANG_SCORE] is None


def test_an_exception_leaves_no_manifest(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(tmp_path, samples_per_shard=2) as writer:
        for row, image in _records(5):
            writer.add(row, image)
        raise RuntimeError("boom")
    assert (tmp_path / SHARDS_DIR / "00000.tar").exists()  # shards were written...
    assert not (tmp_path / MANIFEST_NAME).exists()  # ...but the dataset never was
    with pytest.raises(FileNotFoundError, match="not a wit-builder dataset"):
        list(read_dataset(tmp_path))


def test_a_rerun_removes_the_old_manifest_first(tmp_path):
    with DatasetWriter(tmp_path, samples_per_shard=2) as writer:
        for row, image in _records(4):
            writer.add(row, image)
    assert (tmp_path / MANIFEST_NAME).exists()
    # A second build into the same folder that dies must not leave the first build's manifest over its files.
    with pytest.raises(RuntimeError), DatasetWriter(tmp_path, samples_per_shard=2) as writer:
        for row, image in _records(3)[::-1]:
            writer.add(row, image)
        raise RuntimeError("killed")
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert not (tmp_path / SIZES_NAME).exists()


def test_finalize_refuses_files_that_were_not_written(tmp_path):
    entry = write_shard(tmp_path, 0, _records(2))
    (tmp_path / entry.tar.path).unlink()
    with pytest.raises(ValueError, match="shards/00000.tar: missing"):
        finalize_dataset(tmp_path, [entry], [], {}, {})
    assert not (tmp_path / MANIFEST_NAME).exists()


# --- a write killed midway -------------------------------------------------------------------------------------------

BIG_SHARDS, BIG_PER_SHARD, BIG_IMAGE_BYTES = 5, 8, 2 << 20
_CHILD = "import sys; sys.path.insert(0, sys.argv[2]); import test_shards; test_shards.write_big_dataset(sys.argv[1])"


def _big_records():
    for i in range(BIG_SHARDS * BIG_PER_SHARD):
        yield _row(f"big{i:03d}", i, "jpg"), random.Random(i).randbytes(BIG_IMAGE_BYTES)


def write_big_dataset(out: str) -> None:
    """Run in a child process by the kill test: 5 shards of 16 MiB, slow enough to be caught mid-write."""
    with DatasetWriter(out, samples_per_shard=BIG_PER_SHARD) as writer:
        for row, image in _big_records():
            writer.add(row, image)


def _kill_when_temp_appears(child: subprocess.Popen, shards: Path, pattern: str) -> list[Path]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        temps = list(shards.glob(pattern)) if shards.is_dir() else []
        if temps:
            child.send_signal(signal.SIGKILL)
            child.wait()
            return temps
        time.sleep(0.0005)
    child.kill()
    pytest.fail(f"child ended (rc {child.poll()}) or timed out before a temp file matching {pattern} appeared")


def test_a_write_killed_midway_leaves_no_partial_file_and_a_rerun_completes(tmp_path):
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(Path(__file__).parent)], cwd=REPO, env=env)
    temps = _kill_when_temp_appears(child, out / SHARDS_DIR, f".00002.tar.*{TMP_SUFFIX}")
    assert child.returncode == -signal.SIGKILL
    assert all(t.name.startswith(".") for t in temps)  # partial bytes only ever live under hidden temp names

    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError, match="not a wit-builder dataset"):
        list(read_dataset(out))
    finals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / SHARDS_DIR).glob("[!.]*")}
    assert {"00000.tar", "00000.parquet", "00001.tar", "00001.parquet"} <= set(finals)

    write_big_dataset(str(out))

    manifest = DatasetManifest.from_json((out / MANIFEST_NAME).read_text())
    listed = {Path(f.path).name: f.sha256 for f in manifest.files()}
    # Every file that had a final name before the rerun was whole: the rerun wrote the very same bytes.
    assert {name: listed[name] for name in finals} == finals
    assert sorted(p.name for p in (out / SHARDS_DIR).iterdir()) == sorted([*listed, SIZES_NAME])  # no temp, no stray
    assert manifest.rows == BIG_SHARDS * BIG_PER_SHARD
    assert verify_dataset(out) == []


def test_renumber_makes_shard_numbers_contiguous_and_carry_links_files(tmp_path):
    records = _records(9)
    shards = [write_shard(tmp_path / "a", i, records[j : j + 3]) for i, j in ((2, 0), (5, 3), (9, 6))]
    renamed = renumber_shards(tmp_path / "a", shards)
    assert [s.name for s in renamed] == ["00000", "00001", "00002"]
    assert [(s.rows, s.tar.sha256) for s in renamed] == [(s.rows, s.tar.sha256) for s in shards]
    assert sorted(p.name for p in (tmp_path / "a" / SHARDS_DIR).iterdir()) == [
        f"0000{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")
    ]
    assert renumber_shards(tmp_path / "a", renamed) == renamed  # already contiguous: nothing moves
    with pytest.raises(ValueError, match="move shard"):
        renumber_shards(tmp_path / "a", renamed, start=1)  # would overwrite a shard not yet moved

    part = write_rejections(tmp_path / "a", "part-00000", [_rejection("r1")])
    manifest = finalize_dataset(tmp_path / "a", renamed, [part], {}, {})
    carry_files(tmp_path / "a", tmp_path / "b", manifest.files())
    finalize_dataset(tmp_path / "b", renamed, [part], {}, {})
    assert verify_dataset(tmp_path / "b") == []
    assert [s.key for s in read_dataset(tmp_path / "b")] == [r[fields.KEY] for r, _ in records]
    (tmp_path / "a" / part.path).write_bytes(b"changed")
    with pytest.raises(ValueError, match="not the size"):
        carry_files(tmp_path / "a", tmp_path / "c", [part])
