"""Rows travelling through Beam in batches: one coder call per few thousand rows instead of one per row.

Curation does ~250 us of Python work per candidate; moving each candidate dict across a stage boundary costs ~30 us
on FnApiRunner (coder, windowing, data plane), and curation crosses several. Batches cut that to ~1.5 us a row.
Stages that need every row with the same key in one place (dedup, joins) shuffle sub-batches keyed by a stable
hash partition of the key; the number of partitions follows the row count, so a partition stays a few hundred
thousand rows however large the input.
"""

import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa

from pipeline.hints import small_grouping

# Rows a source puts in one batch: large enough that per-element costs vanish, small enough for a bundle.
BATCH_ROWS = 2000
# Rows a shuffle partition holds at most on average: what a worker keeps in memory while judging one.
PARTITION_ROWS = 250_000
# Partitions at least: the stages after a shuffle run one partition per task, so fewer would idle workers (and a
# 2,000-row batch split 16 ways still moves ~125 rows per element).
MIN_PARTITIONS = 16


class Rows(list):
    """A batch of dict rows as one Beam element. A list subclass, so Beam pickles it whole (one call per batch)."""


def batched(rows: Iterable[dict], size: int = BATCH_ROWS) -> Iterator[Rows]:
    batch = Rows()
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = Rows()
    if batch:
        yield batch


def partitions_for(n: int, rows_per_partition: int = PARTITION_ROWS, least: int = MIN_PARTITIONS) -> int:
    return max(least, math.ceil(n / rows_per_partition))


def partition_of(key: str, partitions: int) -> int:
    # crc32, not hash(): str hashes are salted per process, and every worker must agree on a key's partition.
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def split_by_partition(rows: Iterable[Any], key: Callable[[Any], str], partitions: int) -> Iterator[tuple[int, Rows]]:
    parts: dict[int, Rows] = {}
    for row in rows:
        parts.setdefault(partition_of(key(row), partitions), Rows()).append(row)
    yield from sorted(parts.items())


class CountRows(beam.PTransform):
    """PCollection of Rows -> one int: how many rows in all."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        lengths = batches | "Len" >> beam.Map(len)
        with small_grouping(batches.pipeline):  # one int per batch
            return lengths | "Sum" >> beam.CombineGlobally(sum)


class PartitionRows(beam.PTransform):
    """Rows -> (partition, Rows) by a stable hash of `key(row)`.

    The partition count is `partitions` (an int, or a singleton side input) when given, else
    ceil(rows / rows_per_partition) from a count of the input.
    """

    def __init__(self, key: Callable[[Any], str], rows_per_partition: int = PARTITION_ROWS, partitions: Any = None):
        super().__init__()
        self.key = key
        self.rows_per_partition = rows_per_partition
        self.partitions = partitions

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        parts = self.partitions
        if parts is None:
            per = self.rows_per_partition
            parts = beam.pvalue.AsSingleton(batches | "Count" >> CountRows() | "Parts" >> beam.Map(partitions_for, per))
        return batches | "Split" >> beam.FlatMap(lambda rows, key, n: split_by_partition(rows, key, n), self.key, parts)


class Unbatch(beam.PTransform):
    """Rows -> their dict rows, one element each (for stages that work row by row, like the fetch)."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Rows" >> beam.FlatMap(lambda rows: rows)


def emit(kept: list[dict], rejected: list[dict], tag: str) -> Iterator[Any]:
    """A batch stage's outputs: the kept rows as the main output, the rejection rows under `tag`; no empty batches."""
    if kept:
        yield Rows(kept)
    if rejected:
        yield beam.pvalue.TaggedOutput(tag, Rows(rejected))


class SumCounts(beam.CombineFn):
    """Counters (or any str -> int mappings) summed into one dict; {} for an empty input."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counts: Mapping[str, int]) -> Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict[str, int]:
        return dict(acc)


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """The rows as a table of `schema`: fields it lacks are null, fields it does not know are left out."""
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in schema.names}, schema=schema)
