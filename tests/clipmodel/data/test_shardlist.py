"""Shard listing (ours, img2dataset's, fsspec URLs) and the per-epoch plan: exact coverage, balance, resampling."""

import collections
import itertools
import json
import random

import fsspec
import pytest

from clipmodel.data.shardlist import (
    ShardInfo,
    equal_batches,
    list_shards,
    make_rng,
    plan_epoch,
    resampled_pieces,
    shuffled,
    slot_rows,
)
from pipeline.shards import DatasetWriter
from schemas import fields


def write_ours(path, n: int, per_shard: int) -> None:
    with DatasetWriter(path, samples_per_shard=per_shard) as writer:
        for i in range(n):
            row = {fields.KEY: f"k{i}", fields.URL: f"http://x.test/{i}", fields.IMAGE_FORMAT: "jpg"}
            writer.add(row, b"\xff\xd8 not decoded here")


def test_our_dataset_lists_what_its_manifest_lists(tmp_path):
    write_ours(tmp_path / "ds", 7, 3)
    (tmp_path / "ds" / "shards" / "99999.tar").write_bytes(b"")  # not in the manifest: not ours to read
    shards = list_shards(str(tmp_path / "ds"))
    assert [(s.url, s.rows, s.source) for s in shards] == [
        (str(tmp_path / "ds" / "shards" / f"0000{i}.tar"), rows, 0) for i, rows in enumerate((3, 3, 1))
    ]


def test_img2dataset_rows_come_from_sizes_then_stats_else_unknown(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar", ".00003.tar.tmp", ".hidden.tar"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 9, "count": 10}))
    (tmp_path / "00001_stats.json").write_text(json.dumps({"successes": 4}))
    assert [(s.url.rsplit("/", 1)[1], s.rows) for s in list_shards(str(tmp_path))] == [
        ("00000.tar", 9),
        ("00001.tar", 4),
        ("00002.tar", None),
    ]
    (tmp_path / "sizes.json").write_text(json.dumps({"00000.tar": 1, "00001.tar": 2, "00002.tar": 3}))
    assert [s.rows for s in list_shards(f"file://{tmp_path}")] == [1, 2, 3]


def test_several_datasets_and_urls_mix(tmp_path):
    write_ours(tmp_path / "a", 4, 2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/shardlist-b/00000.tar", b"")
    shards = list_shards([str(tmp_path / "a"), "memory://shardlist-b", "s3://bucket/one.tar"])
    assert [s.source for s in shards] == [0, 0, 1, 2]
    assert shards[2].url == "memory:///shardlist-b/00000.tar" and shards[3] == ShardInfo("s3://bucket/one.tar", None, 2)


def test_bad_datasets_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        list_shards(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nor img2dataset"):
        list_shards(str(tmp_path))
    write_ours(tmp_path / "ds", 2, 2)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["shards"][0]["tar"]["path"] = "../elsewhere.tar"
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="outside the dataset"):
        list_shards(str(tmp_path / "ds"))


def covered(plan) -> collections.Counter:
    """(shard url, sample index) -> how many slots read it."""
    seen = collections.Counter()
    for pieces in plan:
        for p in pieces:
            seen.update((p.shard.url, i) for i in range(p.part, p.shard.rows, p.parts))
    return seen


@pytest.mark.parametrize("ranks,workers", [(1, 1), (1, 2), (2, 2), (3, 2), (2, 3), (4, 4)])
def test_every_sample_is_in_exactly_one_slot(ranks, workers):
    rng = random.Random(ranks * 10 + workers)
    for n in range(1, 20):
        shards = [ShardInfo(f"s{i}", rng.randint(0, 30)) for i in range(n)]
        plan = plan_epoch(shards, ranks, workers)
        assert len(plan) == ranks * workers
        seen = covered(plan)
        assert set(seen.values()) <= {1} and sum(seen.values()) == sum(s.rows for s in shards)
        assert all(len({p.shard.url for p in pieces}) <= 2 for pieces in plan) or n >= ranks * workers


def test_whole_shards_are_balanced_by_rows_and_fewer_shards_evenly():
    shards = [ShardInfo(f"s{i}", rows) for i, rows in enumerate([100, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10])]
    rows = slot_rows(plan_epoch(shards, 2, 1))
    assert sorted(rows) == [100, 100]  # the big shard alone on one rank
    one = slot_rows(plan_epoch([ShardInfo("s", 60)], 3, 2))
    assert one == [10] * 6
    four = plan_epoch([ShardInfo(f"s{i}", 60) for i in range(4)], 3, 2)  # 4 shards, 6 slots: thirds of each
    assert slot_rows(four) == [40] * 6 and {p.parts for ps in four for p in ps} == {3}


def test_equal_batches_trims_every_rank_to_the_smallest():
    # 3 ranks x 2 workers; rank 0 can make 6 + 2 batches of 3, rank 1 2 + 2, rank 2 3 + 3
    limits = equal_batches([18, 6, 6, 7, 9, 9], world_size=3, batch_size=3)
    per_rank = [sum(limits[i : i + 2]) for i in range(0, 6, 2)]
    assert per_rank == [4, 4, 4] and limits == [2, 2, 2, 2, 2, 2]
    assert equal_batches([30, 3, 12, 12], 2, 3) == [7, 1, 4, 4]  # the fuller worker gives up batches first


def test_shard_order_is_the_same_everywhere_for_an_epoch_and_differs_between_epochs():
    shards = [ShardInfo(f"s{i}", 1) for i in range(20)]
    assert shuffled(shards, 0, 5) == shuffled(shards, 0, 5) != shuffled(shards, 0, 6)
    assert sorted(shuffled(shards, 1, 0), key=lambda s: int(s.url[1:])) == shards


def test_resampling_follows_dataset_weights_then_rows():
    shards = [ShardInfo("a0", 100, 0), ShardInfo("a1", 300, 0), ShardInfo("b0", 10, 1)]
    draws = collections.Counter(
        p.shard.url for p in itertools.islice(resampled_pieces(shards, make_rng(0), (3, 1)), 20000)
    )
    assert abs(draws["b0"] / 20000 - 0.25) < 0.015  # dataset b gets its weight whatever its size
    assert abs(draws["a1"] / (draws["a0"] + draws["a1"]) - 0.75) < 0.015  # within a dataset, by rows
    natural = collections.Counter(p.shard.url for p in itertools.islice(resampled_pieces(shards, make_rng(1)), 20000))
    assert abs(natural["b0"] / 20000 - 10 / 410) < 0.006  # no weights: uniform over samples
    with pytest.raises(ValueError):
        next(resampled_pieces(shards, make_rng(0), (0, 0)))


def test_a_single_tar_takes_its_rows_from_its_datasets_sizes(tmp_path):
    write_ours(tmp_path / "ds", 7, 3)
    tars = [str(tmp_path / "ds" / "shards" / f"0000{i}.tar") for i in range(3)]
    assert [s.rows for s in list_shards(tars)] == [3, 3, 1]
    assert [s.rows for s in list_shards([f"file://{tars[2]}"])] == [1]
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "00000.tar").write_bytes(b"")
    assert [s.rows for s in list_shards(str(tmp_path / "loose" / "00000.tar"))] == [None]  # no sizes.json: unknown
    (tmp_path / "loose" / "sizes.json").write_text(json.dumps({"00000.tar": 5}))  # img2dataset's, beside the tar
    assert [s.rows for s in list_shards(str(tmp_path / "loose" / "00000.tar"))] == [5]
