"""Grouping through spill files: every item reaches its partition once, in files of bounded size, on any runner."""

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.spill import Grouping, Spill, SpillWriter, key_partition, read_spilled


def test_writer_round_trip_and_bounded_buffers(tmp_path):
    writer = SpillWriter(str(tmp_path), file_bytes=2_000, buffer_bytes=5_000)
    written = []
    items = [(i % 7, {"key": f"k{i}", "payload": "x" * 100}) for i in range(300)]
    for partition, item in items:
        written += writer.add(partition, item)
        assert writer._buffered <= 5_000  # never more than the cap held
    written += writer.close()
    by_partition: dict[int, list[str]] = {}
    for partition, path in written:
        assert path.startswith(str(tmp_path / f"{partition:06d}"))
        by_partition.setdefault(partition, []).append(path)
    assert len(written) > 7  # buffers went to files before the end
    for partition, paths in by_partition.items():
        got = sorted(item["key"] for item in read_spilled(paths))
        assert got == sorted(item["key"] for p, item in items if p == partition)


def test_spill_groups_items_by_partition(tmp_path):
    items = [(i % 5, ("row", i)) for i in range(1_000)]
    with TestPipeline(runner="FnApiRunner") as p:
        grouped = (
            p
            | beam.Create(items)
            | Spill(str(tmp_path / "spill"), file_bytes=1_000)
            | beam.MapTuple(lambda part, paths: (part, sorted(i for _, i in read_spilled(paths))))
        )
        assert_that(grouped, equal_to([(k, list(range(k, 1_000, 5))) for k in range(5)]))


def _sorted_groups(element: tuple) -> tuple:
    key, values = element
    if isinstance(values, dict):
        return key, {tag: sorted(v) for tag, v in values.items()}
    return key, sorted(values)


@pytest.mark.parametrize("spilled", [False, True], ids=["shuffled", "spilled"])
def test_grouping_gives_what_groupbykey_and_cogroupbykey_give(tmp_path, spilled):
    grouping = Grouping(str(tmp_path / "work") if spilled else None, elements=600)
    pairs = [(("k", i % 7) if i % 2 else f"s{i % 11}", i) for i in range(600)]
    with TestPipeline(runner="FnApiRunner") as p:
        first = p | "A" >> beam.Create(pairs[:300])
        second = p | "B" >> beam.Create(pairs[300:])
        grouped = (first, second) | "Group" >> grouping.group("g") | "SortG" >> beam.Map(_sorted_groups)
        expected = {}
        for k, v in pairs:
            expected.setdefault(k, []).append(v)
        assert_that(grouped, equal_to([(k, sorted(v)) for k, v in expected.items()]), label="Grouped")
        joined = (
            {"a": first, "b": (second, p | "C" >> beam.Create([("s1", -1)]))}
            | "CoGroup" >> grouping.cogroup("c")
            | "SortC" >> beam.Map(_sorted_groups)
        )
        co = {}
        for k, v in pairs[:300]:
            co.setdefault(k, {"a": [], "b": []})["a"].append(v)
        for k, v in [*pairs[300:], ("s1", -1)]:
            co.setdefault(k, {"a": [], "b": []})["b"].append(v)
        assert_that(joined, equal_to([_sorted_groups(kv) for kv in co.items()]), label="CoGrouped")
    if spilled:  # the elements went through files: the shuffles carried paths only
        assert (tmp_path / "work" / "g").is_dir() and (tmp_path / "work" / "c").is_dir()


def test_key_partition_is_stable_across_processes():
    import subprocess
    import sys

    code = "from pipeline.spill import key_partition; print(key_partition(('band', 3, 'abc'), 97))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}  # fmt: skip
    assert runs == {f"{key_partition(('band', 3, 'abc'), 97)}\n"}
