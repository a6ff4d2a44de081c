"""Resharding by a streaming copy: exact shard sizes, rows updated, images byte for byte, same bytes every time."""

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.reshard import Reshard, plan_pieces, read_kept
from pipeline.shard_reader import iter_shard
from pipeline.shards import write_shard
from pipeline.write_dataset import FinalizeDataset
from schemas import fields


def test_plan_cuts_sources_into_exact_shards():
    pieces = plan_pieces({0: 5, 2: 0, 3: 7, 7: 2}, per_shard=4)
    assert pieces == [(0, 0, 0, 4), (1, 0, 4, 5), (1, 3, 0, 3), (2, 3, 3, 7), (3, 7, 0, 2)]
    sizes: dict[int, int] = {}
    for shard, _, lo, hi in pieces:
        sizes[shard] = sizes.get(shard, 0) + hi - lo
    assert sizes == {0: 4, 1: 4, 2: 4, 3: 2}
    assert plan_pieces({}, 4) == []
    with pytest.raises(ValueError):
        plan_pieces({0: 1}, 0)


def _source(root, index: int, keys: list[str]) -> tuple[str, str]:
    samples = [
        (
            {fields.KEY: k, fields.URL: f"http://x/{k}", fields.CAPTION: f"cap {k}", fields.IMAGE_FORMAT: "jpg"},
            f"image-{k}".encode() * 3,
        )
        for k in keys
    ]
    entry = write_shard(root, index, samples)
    return str(root / entry.tar.path), str(root / entry.parquet.path)


def test_read_kept_applies_updates_and_refuses_a_missing_sample(tmp_path):
    tar, parquet = _source(tmp_path, 0, ["a", "b", "c"])
    got = list(read_kept(tar, parquet, {"c": {fields.KEY: "c", fields.DUP_GROUP: "c"}}))
    assert [(row[fields.KEY], row[fields.DUP_GROUP], row[fields.CAPTION], image) for row, image in got] == [
        ("c", "c", "cap c", b"image-c" * 3)
    ]
    with pytest.raises(ValueError, match="missing"):
        list(read_kept(tar, parquet, {"zz": {fields.KEY: "zz"}}))


def _reshard(tmp_path, name: str, sources: dict, kept: list[tuple[int, dict]], per_shard: int):
    root = str(tmp_path / name)
    with TestPipeline(runner="FnApiRunner") as p:
        written = p | beam.Create(kept) | Reshard(root, sources, per_shard, str(tmp_path / f"{name}-work"))
        _ = written | FinalizeDataset(root, {"job": "test"}, 0)
    return tmp_path / name


def test_reshard_copies_kept_samples_into_shards_of_exact_size(tmp_path):
    src = tmp_path / "src"
    keys = {0: [f"a{i:02d}" for i in range(9)], 1: [f"b{i:02d}" for i in range(6)], 4: [f"c{i:02d}" for i in range(8)]}
    sources = {i: _source(src, i, k) for i, k in keys.items()}
    kept = [(i, {fields.KEY: k, fields.DUP_GROUP: k if k.endswith("3") else None}) for i, ks in keys.items()
            for k in ks if not k.endswith(("1", "5"))]  # fmt: skip
    out = _reshard(tmp_path, "out", sources, kept, per_shard=5)
    shards = sorted((out / "shards").glob("*.tar"))
    got = [[(s.key, s.row[fields.DUP_GROUP], s.image) for s in iter_shard(t)] for t in shards]
    assert [len(g) for g in got] == [5, 5, 5, 2]  # 17 kept: exact sizes, the last one smaller
    flat = [item for shard in got for item in shard]
    assert sorted(k for k, _, _ in flat) == sorted(u[fields.KEY] for _, u in kept)
    assert all(image == f"image-{k}".encode() * 3 and group == (k if k.endswith("3") else None)
               for k, group, image in flat)  # fmt: skip
    assert [k for k, _, _ in got[0]] == ["a00", "a02", "a03", "a04", "a06"]  # sources in order, keys in order
    again = _reshard(tmp_path, "again", sources, list(reversed(kept)), per_shard=5)
    assert [t.read_bytes() for t in shards] == [t.read_bytes() for t in sorted((again / "shards").glob("*.tar"))]
