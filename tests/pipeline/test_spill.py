"""Grouping through spill files: every item reaches its partition once, in files of bounded size, on any runner."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.spill import Spill, SpillWriter, read_spilled


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
