"""The stats report's Beam stage: one pass over a dataset's rows with combiners, memory independent of its size."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsSingleton

from pipeline.report import stats
from pipeline.report.assemble import assemble
from pipeline.report.combiners import (
    CounterFn,
    CountsFn,
    HistogramsFn,
    PerKindFn,
    SmallestFn,
    TaggedFn,
    most_frequent_first,
)
from pipeline.report.samples import (
    KEPT_SAMPLES,
    REJECTED_SAMPLES,
    SHARD,
    ReadThumbnails,
    kept_candidate,
    rejected_candidate,
    wanted_by_shard,
)
from schemas import DatasetManifest, fields
from schemas.manifest import BALANCE_COUNTS_NAME

KEPT_COLUMNS = (
    fields.KEY,
    fields.URL,
    fields.CAPTION,
    fields.LANG,
    fields.WIDTH,
    fields.HEIGHT,
    fields.ORIGINAL_WIDTH,
    fields.ORIGINAL_HEIGHT,
    fields.IMAGE_FORMAT,
    fields.BYTES,
    fields.CLIP_SCORE,
)
REJECTED_COLUMNS = (fields.KEY, fields.URL, fields.CAPTION, fields.STAGE, fields.REASON, fields.DETAIL)
TOP_CAPTIONS, TOP_TOKENS, TOP_DOMAINS, EXAMPLES_PER_KIND, EXAMPLE_MEMBERS = 25, 50, 30, 2, 5
_BATCH = 8192
_ONE = (1, 0, None)  # a plain count, as CountsFn takes it


def read_rows(path: str, columns: Sequence[str]) -> Iterator[dict]:
    """Rows of one Parquet file, batch by batch, with `columns` only (a column the file lacks reads as None: older
    schema versions have no clip_score)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        parquet = pq.ParquetFile(f)
        have = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=_BATCH, columns=have):
            for row in batch.to_pylist():
                yield {c: row.get(c) for c in columns}


def _read_kept(shard: tuple[str, str]) -> Iterator[dict]:
    tar, parquet = shard
    for row in read_rows(parquet, KEPT_COLUMNS):
        row[SHARD] = tar
        yield row


def _read_balance(path: str | None) -> list[tuple[str, int, int]] | None:
    if path is None:
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        table = pq.read_table(f, columns=[fields.ENTRY, fields.COUNT_BEFORE, fields.COUNT_AFTER])
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


# Pass 1, keyed: what needs a count per distinct value (unbounded vocabularies), all in one CombinePerKey.
def kept_keys(row: dict) -> Iterator[tuple[tuple, tuple]]:
    yield ("caption", row[fields.CAPTION] or ""), _ONE
    for token in stats.caption_tokens(row[fields.CAPTION]):
        yield ("token", token), _ONE
    yield ("domain", stats.domain(row[fields.URL])), _ONE


def rejected_keys(row: dict) -> Iterator[tuple[tuple, tuple]]:
    outcome = row[fields.REASON] if row[fields.STAGE] in stats.FETCH_OUTCOME_STAGES else None
    yield ("domain", stats.domain(row[fields.URL])), (0, 1, outcome)
    kind = stats.DUPLICATE_KINDS.get(row[fields.REASON])
    if kind is not None:
        yield ("dup", kind, row[fields.DETAIL]), _ONE


def by_total(item: tuple[str, tuple[int, int, dict]]) -> tuple[int, str]:
    return -(item[1][0] + item[1][1]), item[0]


def by_fetched(item: tuple[str, tuple[int, int, dict]]) -> tuple[int, str]:
    return -(item[1][0] + sum(item[1][2].values())), item[0]


# Pass 2, global: every bounded summary, in one TaggedFn.
def summary_fn() -> TaggedFn:
    dup_specs = {kind: stats.GROUP_SIZE_SPEC for kind in stats.DUPLICATE_KINDS.values()}
    tuple_fn = beam.combiners.TupleCombineFn
    return TaggedFn(
        {
            "kept": tuple_fn(HistogramsFn(stats.SAMPLE_SPECS), CounterFn(), CounterFn(), SmallestFn(KEPT_SAMPLES)),
            "rejected": SmallestFn(REJECTED_SAMPLES),
            "captions": SmallestFn(TOP_CAPTIONS, most_frequent_first),
            "tokens": SmallestFn(TOP_TOKENS, most_frequent_first),
            # A domain with nothing kept has no place in the concentration: CounterFn skips its None.
            "sources": tuple_fn(
                beam.combiners.CountCombineFn(),
                SmallestFn(TOP_DOMAINS, by_total),
                SmallestFn(TOP_DOMAINS, by_fetched),
                CounterFn(),
            ),
            "dup": tuple_fn(HistogramsFn(dup_specs), PerKindFn(SmallestFn(EXAMPLES_PER_KIND))),
        }
    )


def kept_summary(row: dict, seed: int) -> tuple[str, tuple]:
    """A kept row's inputs to summary_fn()'s "kept" combines, in their order."""
    fmt = row[fields.IMAGE_FORMAT] or "unknown"
    return "kept", (stats.sample_metrics(row), stats.language(row), fmt, kept_candidate(row, seed))


def keyed_summary(item: tuple[tuple, tuple[int, int, dict]]) -> tuple[str, Any]:
    key, counts = item
    if key[0] == "domain":
        d = (key[1], counts)
        return "sources", (d, d, d, counts[0] or None)
    if key[0] == "dup":
        size = counts[0] + 1  # the survivor and the rejections naming it
        return "dup", ({key[1]: size}, (key[1], (-size, key[2])))
    return ("captions" if key[0] == "caption" else "tokens"), (key[1], counts[0])


# Pass 3, examples: the rows of the duplicate groups shown, found with pass 2's result as a side input.
def chosen_groups(summary: dict) -> tuple[set[tuple[str, str]], set[str]]:
    """((kind, survivor) of the groups shown, their survivors' keys)."""
    groups = {(kind, survivor) for kind, largest in summary["dup"][1].items() for _, survivor in largest}
    return groups, {survivor for _, survivor in groups}


def example_rows(row: dict, chosen: tuple[set, set], kept: bool) -> Iterator[tuple[str, Any]]:
    groups, survivors = chosen
    if kept and row[fields.KEY] in survivors:
        yield "survivors", (row[fields.KEY], row[fields.CAPTION], row[SHARD])
    kind = None if kept else stats.DUPLICATE_KINDS.get(row[fields.REASON])
    if kind is not None and (kind, row[fields.DETAIL]) in groups:
        yield "members", ((kind, row[fields.DETAIL]), (row[fields.KEY], row[fields.URL], row[fields.CAPTION]))


def examples_fn() -> TaggedFn:
    chosen_max = EXAMPLES_PER_KIND * len(stats.DUPLICATE_KINDS)
    return TaggedFn({"survivors": SmallestFn(chosen_max), "members": PerKindFn(SmallestFn(EXAMPLE_MEMBERS))})


def wanted_thumbnails(_: Any, summary: dict, examples: dict) -> list[tuple[str, list[str]]]:
    samples = [(s[1], s[2]) for s in summary["kept"][3]]
    return wanted_by_shard(samples + [(key, shard) for key, _, shard in examples["survivors"]])


def parts_of(_: Any, summary: dict, examples: dict, thumbs: dict, balance: list | None) -> dict[str, Any]:
    """The passes' results under the names pipeline.report.assemble reads."""
    sources, dup = summary["sources"], summary["dup"]
    parts = dict(zip(("sample_hists", "languages", "formats", "kept_samples"), summary["kept"], strict=True))
    parts.update(zip(("domains", "top_domains", "fetch_outcomes", "kept_count_of_counts"), sources, strict=True))
    parts.update(
        {
            "rejected_samples": summary["rejected"],
            "top_captions": summary["captions"],
            "top_tokens": summary["tokens"],
            "dup_hists": dup[0],
            "dup_groups": dup[1],
            "dup_members": examples["members"],
            "survivors": examples["survivors"],
            "thumbs": thumbs,
        }
    )
    if balance is not None:
        parts["balance_entries"] = balance
    return parts


class DatasetStats(beam.PTransform):
    """PBegin -> one dict, the dataset's stats.json (see pipeline.report.assemble for its sections).

    Three passes over the rows, each a single shuffle: counts per distinct caption, token, domain and duplicate
    group; one global combine of every bounded summary; the rows of the examples shown. Then the tars of the shown
    samples only, for thumbnails.
    """

    def __init__(self, root: str, manifest: DatasetManifest, seed: int = 0):
        super().__init__()
        self.root, self.manifest, self.seed = str(root), manifest, seed

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        root, m, seed = Path(self.root), self.manifest, self.seed
        shards = [(str(root / s.tar.path), str(root / s.parquet.path)) for s in m.shards]
        kept = pbegin | "ShardFiles" >> beam.Create(shards) | "ReadKept" >> beam.FlatMap(_read_kept)
        rejected = (
            pbegin
            | "RejectedFiles" >> beam.Create([str(root / f.path) for f in m.rejected])
            | "ReadRejected" >> beam.FlatMap(read_rows, REJECTED_COLUMNS)
        )
        keyed = (
            (kept | "KeptKeys" >> beam.FlatMap(kept_keys), rejected | "RejectedKeys" >> beam.FlatMap(rejected_keys))
            | "AllKeys" >> beam.Flatten()
            | "PerKey" >> beam.CombinePerKey(CountsFn())
            | "KeyedSummary" >> beam.Map(keyed_summary)
        )
        rows = (
            kept | "PerKept" >> beam.Map(kept_summary, seed),
            rejected | "PerRejected" >> beam.Map(lambda r: ("rejected", rejected_candidate(r, seed))),
        )
        summary_pc = (keyed, *rows) | "ToSummarise" >> beam.Flatten() | "Summary" >> beam.CombineGlobally(summary_fn())
        summary = AsSingleton(summary_pc)
        chosen = AsSingleton(summary_pc | "Chosen" >> beam.Map(chosen_groups))
        examples = AsSingleton(
            (
                kept | "KeptExamples" >> beam.FlatMap(example_rows, chosen, kept=True),
                rejected | "RejectedExamples" >> beam.FlatMap(example_rows, chosen, kept=False),
            )
            | "AllExamples" >> beam.Flatten()
            | "Examples" >> beam.CombineGlobally(examples_fn())
        )
        once = pbegin | "Once" >> beam.Create([None])
        thumbs = (
            once
            | "Wanted" >> beam.FlatMap(wanted_thumbnails, summary, examples)
            | "Spread" >> beam.Reshuffle()  # one shard a worker: the tars are the big files
            | "ReadThumbs" >> beam.ParDo(ReadThumbnails())
            | "Thumbs" >> beam.combiners.ToDict()
        )
        balance = root / BALANCE_COUNTS_NAME
        balance_file = str(balance) if balance.is_file() else None
        entries = pbegin | "BalanceFile" >> beam.Create([balance_file]) | "ReadBalance" >> beam.Map(_read_balance)
        return (
            once
            | "Parts" >> beam.Map(parts_of, summary, examples, AsSingleton(thumbs), AsSingleton(entries))
            | "Assemble" >> beam.Map(assemble, str(root), m, seed)
        )
