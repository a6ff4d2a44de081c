"""Pipeline file access on a non-local Beam FileSystem (memfs://): the helpers, and datasets written and read there."""

import uuid

import pytest
from memfs import clear, files_under, upload

from pipeline import fsio
from pipeline.shard_reader import ReadReport, list_shards, load_manifest, read_dataset, verify_dataset
from pipeline.shards import carry_files
from pipeline.write_dataset import completed_buckets, write_bucket
from schemas import fields, reasons
from schemas.manifest import MANIFEST_NAME, SHARDS_DIR


@pytest.fixture
def remote():
    """A fresh memfs:// folder, emptied after the test."""
    root = f"memfs://test-{uuid.uuid4().hex[:8]}/data"
    yield root
    clear(root)


def test_local_and_remote_paths_are_told_apart_and_joined_by_their_rules(tmp_path):
    assert fsio.is_local(tmp_path) and fsio.is_local("rel/x") and not fsio.is_local("memfs://b/x")
    assert fsio.join("memfs://b/ds/", "shards/00000.tar") == "memfs://b/ds/shards/00000.tar"
    assert fsio.join(tmp_path, "shards/00000.tar") == str(tmp_path / "shards" / "00000.tar")
    assert fsio.split("memfs://b/ds/x.tar") == ("memfs://b/ds", "x.tar") and fsio.basename("memfs://b/ds/") == "ds"


def test_atomic_writes_listing_and_removal_on_a_remote_folder(remote):
    with fsio.atomic_write(f"{remote}/a/x.bin") as out:
        out.write(b"one")
        assert not fsio.exists(f"{remote}/a/x.bin")  # nothing at the final name until the writer is done
    with pytest.raises(RuntimeError), fsio.atomic_write(f"{remote}/a/y.bin") as out:
        out.write(b"half")
        raise RuntimeError("killed")
    assert files_under(remote) == {"a/x.bin": b"one"}  # the failed write left neither file nor temp
    with fsio.atomic_write(f"{remote}/a/deeper/z.bin") as out:
        out.write(b"three")
    assert fsio.read_bytes(f"{remote}/a/x.bin") == b"one" and fsio.size(f"{remote}/a/x.bin") == 3
    assert fsio.size(f"{remote}/a/missing") is None and not fsio.is_file(f"{remote}/a")
    assert fsio.is_dir(f"{remote}/a") and fsio.exists(f"{remote}/a") and not fsio.exists(f"{remote}/b")
    assert fsio.list_files(f"{remote}/a") == [f"{remote}/a/x.bin"]  # direct children only
    assert fsio.walk_files(f"{remote}/a") == [f"{remote}/a/deeper/z.bin", f"{remote}/a/x.bin"]
    with pytest.raises(FileNotFoundError):
        fsio.read_bytes(f"{remote}/a/missing")
    fsio.rename(f"{remote}/a/x.bin", f"{remote}/a/w.bin")
    assert fsio.remove(f"{remote}/a/w.bin") and not fsio.remove(f"{remote}/a/w.bin")
    fsio.remove_tree(f"{remote}/a")
    fsio.remove_tree(f"{remote}/a")  # absent: nothing to do
    assert files_under(remote) == {}


def test_a_dataset_written_remotely_is_byte_identical_to_a_local_one(make_shapes_dataset, tmp_path, remote):
    local = make_shapes_dataset(tmp_path / "local", samples=40, per_shard=16, side=32)
    make_shapes_dataset(remote, samples=40, per_shard=16, side=32)
    written = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert files_under(remote) == written  # same names, same bytes, no temp left behind
    assert load_manifest(remote) == load_manifest(local) and list_shards(remote) == list_shards(local)
    assert verify_dataset(remote) == []
    report = ReadReport()
    got = [(s.key, s.image, s.row) for s in read_dataset(remote, report)]
    assert got == [(s.key, s.image, s.row) for s in read_dataset(local)] and len(got) == 40 and report.errors == []
    # Readers trust the manifest: a tampered shard is caught through the remote reader too.
    fsio.remove(f"{remote}/{SHARDS_DIR}/00001.parquet")
    assert verify_dataset(remote) == [f"{SHARDS_DIR}/00001.parquet: missing"]


def test_an_unfinished_remote_dataset_is_no_dataset(remote):
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        list_shards(remote)
    write_bucket(remote, 0, 1, "fp", [], [_rejection("k0")])
    with pytest.raises(FileNotFoundError, match="did not finish"):
        list_shards(remote)


def _rejection(key: str) -> dict:
    return {fields.KEY: key, fields.URL: f"http://x.test/{key}", fields.STAGE: reasons.FETCH,
            fields.REASON: reasons.HTTP_4XX, fields.DETAIL: "404"}  # fmt: skip


def test_bucket_markers_on_a_remote_folder_resume_a_write(make_shapes_dataset, tmp_path, remote):
    samples = [(s.row, s.image) for s in read_dataset(make_shapes_dataset(tmp_path / "src", samples=6, side=32))]
    first = write_bucket(remote, 0, 2, "fp", samples[:3], [_rejection("k0")])
    write_bucket(remote, 1, 2, "fp", samples[3:], [])
    done = completed_buckets(remote, "fp")
    assert sorted(done) == [0, 1] and done[0] == first
    assert completed_buckets(remote, "other") == {}
    fsio.remove(f"{remote}/{first.shard.tar.path}")  # a bucket whose shard is gone is redone
    assert sorted(completed_buckets(remote, "fp")) == [1]
    assert completed_buckets(f"{remote}/nothing-here", "fp") == {}


def test_carry_files_between_local_and_remote_datasets(make_shapes_dataset, tmp_path, remote):
    local = make_shapes_dataset(tmp_path / "local", samples=20, per_shard=16, side=32)
    manifest = load_manifest(local)
    carry_files(local, remote, manifest.files())
    carry_files(local, remote, manifest.files())  # rerunnable
    carry_files(remote, tmp_path / "back", manifest.files())
    for entry in manifest.files():
        assert fsio.read_bytes(f"{remote}/{entry.path}") == (local / entry.path).read_bytes()
        assert (tmp_path / "back" / entry.path).read_bytes() == (local / entry.path).read_bytes()
    with pytest.raises(ValueError, match="missing or not the size"):
        carry_files(f"{remote}/elsewhere", tmp_path / "c", manifest.files())


def test_an_img2dataset_folder_is_read_remotely(tmp_path, remote, make_shapes_dataset):
    ours = make_shapes_dataset(tmp_path / "ours", samples=8, per_shard=8, side=32)
    flat = tmp_path / "flat"
    flat.mkdir()
    for ext in ("tar", "parquet"):  # img2dataset's layout: shards at the top, no manifest
        (flat / f"00000.{ext}").write_bytes((ours / SHARDS_DIR / f"00000.{ext}").read_bytes())
    upload(flat, remote)
    assert [s.name for s in list_shards(remote)] == ["00000"] and not fsio.is_file(f"{remote}/{MANIFEST_NAME}")
    assert [s.key for s in read_dataset(remote)] == [s.key for s in read_dataset(ours)]
