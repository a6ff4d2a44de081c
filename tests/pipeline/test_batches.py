"""Rows batches: batching, stable partitions, summed counts, and the batched Parquet writer."""

import subprocess
import sys
from collections import Counter

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.batches import (
    MIN_PARTITIONS,
    CountRows,
    PartitionRows,
    Rows,
    SumCounts,
    Unbatch,
    batched,
    partition_of,
    partitions_for,
    rows_table,
    split_by_partition,
)
from pipeline.rows_io import WriteRows


def test_batched_keeps_every_row_in_order():
    rows = [{"i": i} for i in range(7)]
    batches = list(batched(rows, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(isinstance(b, Rows) for b in batches)
    assert [r for b in batches for r in b] == rows
    assert list(batched([], 3)) == []


def test_partition_count_follows_the_rows():
    assert partitions_for(0) == MIN_PARTITIONS
    assert partitions_for(10, rows_per_partition=3, least=1) == 4
    assert partitions_for(400_000_000, rows_per_partition=250_000) == 1600


def test_partitions_agree_across_processes():
    # str hash() is salted per process; partition_of must not be, or two workers would split one URL's spellings.
    keys = ["http://a.test/1.jpg", "http://b.test/2.jpg", "ünïcode", ""]
    here = [partition_of(k, 97) for k in keys]
    code = f"from pipeline.batches import partition_of; print([partition_of(k, 97) for k in {keys!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert there.strip() == str(here)
    assert all(0 <= p < 97 for p in here)


def test_split_by_partition_groups_equal_keys():
    rows = [{"k": k} for k in "abcabcaa"]
    parts = list(split_by_partition(rows, lambda r: r["k"], 5))
    assert sum(len(b) for _, b in parts) == len(rows)
    for p, batch in parts:
        assert {partition_of(r["k"], 5) for r in batch} == {p}
    by_key = {r["k"]: p for p, b in parts for r in b}
    assert by_key == {k: partition_of(k, 5) for k in "abc"}


def test_sum_counts_combines_batches():
    fn = SumCounts()
    acc = fn.add_input(fn.create_accumulator(), Counter(a=2, b=1))
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(), {"b": 4})])
    assert fn.extract_output(acc) == {"a": 2, "b": 5}
    assert fn.extract_output(fn.create_accumulator()) == {}


def test_rows_table_projects_and_fills_nulls():
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    table = rows_table([{"a": 1, "zz": "dropped"}, {"b": "x"}], schema)
    assert table.schema == schema
    assert table.to_pylist() == [{"a": 1, "b": None}, {"a": None, "b": "x"}]


def test_partition_rows_and_batched_writer(tmp_path):
    schema = pa.schema([("key", pa.string()), ("n", pa.int64())])
    rows = [{"key": f"k{i % 5}", "n": i} for i in range(23)]
    with TestPipeline(runner="FnApiRunner") as p:
        batches = p | beam.Create(list(batched(rows, 4)))
        assert_that(batches | CountRows(), equal_to([23]), label="Count")
        parts = batches | PartitionRows(lambda r: r["key"], rows_per_partition=10)
        # Every key lands in exactly one partition, and all 23 rows survive the split.
        seen = parts | beam.FlatMap(lambda kv: [(r["key"], kv[0]) for r in kv[1]]) | beam.Distinct()
        assert_that(seen, equal_to([(f"k{i}", partition_of(f"k{i}", MIN_PARTITIONS)) for i in range(5)]), label="P")
        assert_that(parts | beam.Values() | "Flat" >> Unbatch() | beam.Map(lambda r: r["n"]), equal_to(range(23)))
        _ = batches | WriteRows(str(tmp_path / "rows"), schema, batched=True)
    written = pa.concat_tables(pq.read_table(f) for f in sorted(tmp_path.glob("rows*.parquet")))
    assert written.schema == schema
    assert sorted(written.to_pylist(), key=lambda r: r["n"]) == rows
