"""Kept samples into new shards by a streaming copy from the shards that hold them: decisions move, images do not.

A job that judges samples (image dedup, CLIP score, the embedding filter) decides on rows. `Reshard` takes the kept
rows (or just their keys and the fields the job sets), each with the index of the source shard that holds its
image, and writes the new dataset's shards:

1. the rows are spilled per source shard (pipeline.spill) and counted per source (a few numbers);
2. the kept samples, in the order (source shard, key), are cut into output shards of exactly `per_shard` samples
   (the last one smaller): output shard j takes rows lo..hi of one or more sources, a plan of a few tuples;
3. the worker that owns output shard j reads those sources' tars in order, parks the images it needs in a spool
   on local disk, and writes the shard (key order inside it) from the kept rows and the spool.

Memory is one output shard's rows and one image at a time; each source tar is read by the one or two output shards
that overlap it. Same kept rows, same sources: same bytes.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam

from pipeline import fsio
from pipeline.shard_reader import iter_shard
from pipeline.shards import write_shard_from
from pipeline.spill import Spill, Spool, read_spilled
from pipeline.write_dataset import BucketResult
from schemas import fields

# (output shard, source shard, lo, hi): output shard j takes kept rows lo..hi-1 (in key order) of one source.
Piece = tuple[int, int, int, int]


def plan_pieces(counts: Mapping[int, int], per_shard: int) -> list[Piece]:
    """Cut the kept rows of each source (by index order, keys in order inside) into output shards of `per_shard`."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    pieces, position = [], 0
    for source in sorted(counts):
        lo, n = 0, counts[source]
        while lo < n:
            shard, room = divmod(position, per_shard)
            take = min(n - lo, per_shard - room)
            pieces.append((shard, source, lo, lo + take))
            lo += take
            position += take
    return pieces


def read_kept(
    tar: str, parquet: str | None, updates: Mapping[str, dict], spool: Spool | None = None
) -> Iterator[tuple[dict, bytes]]:
    """Stream one shard: each sample named in `updates`, its row with the update applied, and its image (parked in
    `spool` too when given), in the shard's order. ValueError if one of them is not in the shard."""
    found = 0
    for sample in iter_shard(tar, parquet):
        update = updates.get(sample.key)
        if update is not None:
            found += 1
            if spool is not None:
                spool.put(sample.key, sample.image)
            yield sample.row | update, sample.image
    if found != len(updates):
        raise ValueError(f"{tar}: {len(updates) - found} kept samples are missing from the shard they were read from")


def write_output_shard(
    root: str,
    number: int,
    pieces: Iterable[tuple[int, int, int, list[str]]],
    sources: Mapping[int, tuple[str, str | None]],
) -> BucketResult:
    """Write output shard `number` from its pieces (source, lo, hi, spill paths of that source's kept updates)."""
    rows: list[dict] = []
    with Spool() as spool:
        for source, lo, hi, paths in sorted(pieces):
            taken = sorted(read_spilled(paths), key=lambda r: r[fields.KEY])[lo:hi]
            updates = {r[fields.KEY]: r for r in taken}
            rows += [row for row, _ in read_kept(*sources[source], updates, spool)]
        shard = write_shard_from(root, number, rows, spool.get)
    return BucketResult(number, 0, "", shard, None, {})


def _pieces(_, counts: dict[int, int], spilled: dict[int, list[str]], per_shard: int) -> Iterator[tuple[int, Any]]:
    for shard, source, lo, hi in plan_pieces(counts, per_shard):
        yield shard, (source, lo, hi, spilled[source])


class Reshard(beam.PTransform):
    """(source shard index, update) -> one BucketResult per output shard written (its ShardEntry).

    An update is a dict with the kept sample's key and the fields the job sets (dup_group, clip_score, ...): the
    written row is the source's row with the update applied. `sources` maps each index to its (tar, parquet) paths;
    output shards are numbered from `first`.
    """

    def __init__(self, root: str, sources: Mapping[int, tuple[str, str | None]], per_shard: int, work: str,
                 first: int = 0):  # fmt: skip
        super().__init__()
        self.root = root
        self.sources = dict(sources)
        self.per_shard = per_shard
        self.work = work
        self.first = first

    def expand(self, keyed_rows: beam.PCollection) -> beam.PCollection:
        root, sources, first = self.root, self.sources, self.first
        spilled = keyed_rows | "Spill" >> Spill(fsio.join(self.work, "reshard"))
        counts = (
            keyed_rows
            | "PerSource" >> beam.MapTuple(lambda source, _: (source, 1))
            | "Count" >> beam.CombinePerKey(sum)
        )
        return (
            keyed_rows.pipeline
            | "Once" >> beam.Create([None])
            | "Plan" >> beam.FlatMap(_pieces, beam.pvalue.AsDict(counts), beam.pvalue.AsDict(spilled), self.per_shard)
            | "ByOutput" >> beam.GroupByKey()
            | "Write" >> beam.MapTuple(lambda j, pieces: write_output_shard(root, first + j, pieces, sources))
        )
