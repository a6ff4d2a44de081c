"""Query balancing (WIT / MetaCLIP): match captions against a query list, then cap each query near t pairs."""

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick
import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import fsio
from pipeline.batches import Rows, SumCounts, emit, partition_of, partitions_for
from pipeline.counters import Counters
from pipeline.hints import small_grouping
from pipeline.rejection import rejection_row
from pipeline.shards import PARQUET_OPTIONS, write_file_atomic
from pipeline.spill import Spill, read_spilled
from schemas import FileEntry, fields, reasons
from schemas.manifest import BALANCE_COUNTS_NAME
from schemas.reasons import REJECTED
from schemas.records import BALANCE_COUNTS_SCHEMA

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class BalanceConfig:
    t: int = 20_000  # pairs kept per entry, in expectation; MetaCLIP's 400M set and CLIP's WIT both used ~20k
    seed: int = 0
    metadata_path: str | None = None  # one entry per line, or a .json list (MetaCLIP's metadata.json)
    add_wordfreq: bool = False  # with metadata_path: use the wordfreq list as well, not instead
    wordfreq_lang: str = "en"
    min_zipf: float = 3.0  # at least once per million words: ~28k English words
    top_n: int | None = None  # instead of min_zipf: the n most frequent wordfreq words that pass the filters
    alpha_only: bool = True  # wordfreq list only: drops "it's", "u.s", digits
    min_entry_len: int = 2
    word_boundaries: bool = True

    def __post_init__(self) -> None:
        if self.t < 1:
            raise ValueError(f"t must be at least 1, got {self.t}")
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n must be at least 1 or None, got {self.top_n}")
        if self.min_entry_len < 1:
            raise ValueError(f"min_entry_len must be at least 1, got {self.min_entry_len}")
        import wordfreq  # here, not at the top: importing it costs a Beam worker ~1.5 s, and workers never need it

        if self.wordfreq_lang not in wordfreq.available_languages():
            raise ValueError(f"wordfreq has no list for {self.wordfreq_lang!r}")


def normalize_text(text: str) -> str:
    """The form both captions and entries are matched in: NFC, lower case, single spaces."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def normalize_entries(entries: Iterable[str], min_len: int = 1) -> list[str]:
    """Normalized entries of at least `min_len` characters, duplicates dropped, first occurrence's order kept."""
    out = (normalize_text(e) for e in entries)
    return list(dict.fromkeys(e for e in out if len(e) >= min_len))


def wordfreq_entries(
    lang: str = "en", min_zipf: float = 3.0, top_n: int | None = None, alpha_only: bool = True, min_len: int = 2
) -> list[str]:
    """wordfreq words, most frequent first: the first `top_n` that pass the filters, or all at or above `min_zipf`."""
    import wordfreq

    out: list[str] = []
    # Band i holds the words at -i centibels, alphabetical within the band: a deterministic order.
    for i, band in enumerate(wordfreq.get_frequency_list(lang)):
        if top_n is None and wordfreq.cB_to_zipf(-i) < min_zipf:
            break
        for word in band:
            if (word.isalpha() or not alpha_only) and len(word) >= min_len:
                out.append(word)
                if len(out) == top_n:
                    return out
    return out


def read_metadata_file(path: str) -> list[str]:
    """Entries from a .json list of strings (MetaCLIP's metadata.json) or a text file, one per line.

    In a text file, blank lines and lines starting with "#" are skipped. Read through Beam FileSystems, so
    gs:// and s3:// paths work where their Beam extras are installed.
    """
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8-sig")
    if path.endswith((".json", ".json.gz")):
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return data
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_entries(cfg: BalanceConfig) -> list[str]:
    """The query list cfg names, normalized and deduplicated: the user's file, the wordfreq list, or both."""
    raw: list[str] = []
    if cfg.metadata_path is None or cfg.add_wordfreq:
        raw += wordfreq_entries(cfg.wordfreq_lang, cfg.min_zipf, cfg.top_n, cfg.alpha_only, cfg.min_entry_len)
    if cfg.metadata_path is not None:
        raw += read_metadata_file(cfg.metadata_path)
    entries = normalize_entries(raw, cfg.min_entry_len)
    if not entries:
        raise ValueError("the query list is empty: every caption would be rejected")
    return entries


def _entry_list(cfg: BalanceConfig, entries: Iterable[str] | None) -> list[str]:
    return load_entries(cfg) if entries is None else normalize_entries(entries, cfg.min_entry_len)


def build_automaton(entries: Iterable[str]) -> ahocorasick.Automaton:
    """An Aho–Corasick automaton over normalized entries; each match's value is the entry itself."""
    automaton = ahocorasick.Automaton()
    for entry in entries:
        automaton.add_word(entry, entry)
    automaton.make_automaton()
    return automaton


def match_entries(caption: str | None, automaton: ahocorasick.Automaton, word_boundaries: bool = True) -> list[str]:
    """The entries found in the caption, sorted; overlapping and nested matches all count.

    With word boundaries an entry must not touch a letter or digit on either side, so "cat" matches "a cat's
    toy" and "red_cat.jpg" but not "catalog" (nor "cats"). Plain substrings let short entries match nearly every
    caption, which then says nothing about it; MetaCLIP's released code also matches whole words (it pads text
    and entries with spaces). The price: in scripts written without spaces (Chinese, Japanese, Thai) an entry
    matches only where it stands alone; use word_boundaries=False for those.
    """
    text = normalize_text(caption or "")
    if not text or automaton.kind != ahocorasick.AHOCORASICK:
        return []
    found = set()
    for end, entry in automaton.iter(text):
        start = end - len(entry) + 1
        before = text[start - 1] if start > 0 else " "
        after = text[end + 1] if end + 1 < len(text) else " "
        if not (word_boundaries and (before.isalnum() or after.isalnum())):
            found.add(entry)
    return sorted(found)


def draw(key: str, entry: str, seed: int) -> float:
    """A uniform float in [0, 1) fixed by (key, entry, seed): the same on every run, runner and process."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}\x1f{entry}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53  # 53 bits: every value is a float below 1.0


def match_candidate(
    candidate: dict, automaton: ahocorasick.Automaton, word_boundaries: bool
) -> tuple[dict, str | None]:
    """The candidate with MATCHED_ENTRIES set, and NO_QUERY_MATCH if it matched nothing."""
    out = dict(candidate)
    out[fields.MATCHED_ENTRIES] = matched = match_entries(candidate.get(fields.CAPTION), automaton, word_boundaries)
    return out, None if matched else reasons.NO_QUERY_MATCH


def sample_verdict(candidate: dict, counts: Mapping[str, int], cfg: BalanceConfig) -> tuple[str | None, str]:
    """(reason, detail): kept (None) if any matched entry's draw falls under min(1, t / count) — MetaCLIP's rule."""
    key, entries = str(candidate[fields.KEY]), candidate[fields.MATCHED_ENTRIES]
    # An entry at or under t keeps everything: t / count >= 1 beats every draw, so rare entries are never thinned.
    if any(draw(key, e, cfg.seed) < cfg.t / counts[e] for e in entries):
        return None, ""
    return reasons.OVER_QUERY_CAP, ", ".join(f"{e}:{counts[e]}" for e in entries)


def entry_counts(rows: Iterable[dict]) -> Counter:
    """How many of the rows matched each entry."""
    return Counter(e for candidate in rows for e in candidate[fields.MATCHED_ENTRIES])


class BalanceResult(NamedTuple):
    kept: list[dict]
    rejected: list[dict]
    counts_before: dict[str, int]
    counts_after: dict[str, int]


def balance_pure(candidates: Iterable[dict], cfg: BalanceConfig, entries: Iterable[str] | None = None) -> BalanceResult:
    """The whole stage in one process (kept in input order): the reference the Beam transform must agree with."""
    automaton = build_automaton(_entry_list(cfg, entries))
    matched, rejected = [], []
    for candidate in candidates:
        out, reason = match_candidate(candidate, automaton, cfg.word_boundaries)
        if reason:
            rejected.append(rejection_row(out, reason))
        else:
            matched.append(out)
    before = entry_counts(matched)
    kept = []
    for candidate in matched:
        reason, detail = sample_verdict(candidate, before, cfg)
        if reason:
            rejected.append(rejection_row(candidate, reason, detail))
        else:
            kept.append(candidate)
    after = entry_counts(kept)
    return BalanceResult(kept, rejected, dict(before), dict(after))


def counts_table(before: Mapping[str, int], after: Mapping[str, int]) -> pa.Table:
    """One row per entry, most matched first (ties by entry), so the file reads as the entry-count curve."""
    entries = sorted(set(before) | set(after), key=lambda e: (-before.get(e, 0), e))
    columns = [entries, [before.get(e, 0) for e in entries], [after.get(e, 0) for e in entries]]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, BALANCE_COUNTS_SCHEMA, strict=True)], schema=BALANCE_COUNTS_SCHEMA
    )


def write_balance_counts(root: str | Path, before: Mapping[str, int], after: Mapping[str, int]) -> FileEntry:
    """Write root/balance_counts.parquet atomically, with the shard writer's fixed Parquet options."""
    sink = pa.BufferOutputStream()
    pq.write_table(counts_table(before, after), sink, **PARQUET_OPTIONS)
    return write_file_atomic(root, BALANCE_COUNTS_NAME, sink.getvalue().to_pybytes())


class _Match(beam.DoFn):
    # The entries travel inside the pickled DoFn, so every worker matches against the very list the launcher
    # loaded (no file to reach, no wordfreq version skew); ~10 bytes an entry, a few MB at MetaCLIP's 500k.
    def __init__(self, entries: tuple[str, ...], word_boundaries: bool):
        self.entries = entries
        self.word_boundaries = word_boundaries

    def setup(self) -> None:
        self.automaton = build_automaton(self.entries)
        self.counters = Counters(reasons.BALANCE)

    def process(self, rows: Rows) -> Iterator[Any]:
        matched, rejected = [], []
        for candidate in rows:
            out, reason = match_candidate(candidate, self.automaton, self.word_boundaries)
            if reason is None:
                matched.append(out)
            else:
                rejected.append(rejection_row(out, reason))
        self.counters.inc("matched", len(matched))
        self.counters.inc(reasons.NO_QUERY_MATCH, len(rejected))
        yield from emit(matched, rejected, REJECTED)


class _Sample(beam.DoFn):
    def __init__(self, cfg: BalanceConfig):
        self.cfg = cfg

    def setup(self) -> None:
        self.counters = Counters(reasons.BALANCE)

    def process(self, element: tuple[int, list[str]], counts: Mapping[str, int]) -> Iterator[Any]:
        _, paths = element
        for rows in read_spilled(paths):  # a spill file at a time: the verdict is the row's alone
            kept, rejected = [], []
            for candidate in rows:
                reason, detail = sample_verdict(candidate, counts, self.cfg)
                if reason is None:
                    kept.append(candidate)
                else:
                    rejected.append(rejection_row(candidate, reason, detail))
            self.counters.inc("kept", len(kept))
            self.counters.inc(reasons.OVER_QUERY_CAP, len(rejected))
            yield from emit(kept, rejected, REJECTED)


class BalanceOutputs(NamedTuple):
    """The stage's PCollections; `out.kept` and `out[REJECTED]` both work, as on a ParDo's outputs."""

    kept: Any  # Rows batches
    rejected: Any  # a tuple of PCollections of Rows batches (no matches, over the cap): flatten them to read them
    counts_before: Any  # one dict: entry -> matched candidates
    counts_after: Any  # one dict: entry -> kept candidates

    def __getitem__(self, item: Any) -> Any:
        return getattr(self, item) if isinstance(item, str) else tuple.__getitem__(self, item)


def _spill_partition(rows: Rows, partitions: int) -> tuple[int, Rows]:
    # A whole batch to one partition, by its first key: the verdicts do not depend on where a row is sampled.
    return partition_of(str(rows[0][fields.KEY]), partitions), rows


class BalanceQueries(beam.PTransform):
    """Rows batches -> `kept` (MATCHED_ENTRIES set) and `rejected` batches, and entry counts before and after.

    Sampling needs every match counted first, so the matched rows wait somewhere meanwhile: in spill files under
    `work` (pipeline.spill), not in the in-process runner's memory, which is where a PCollection read after a side
    input is computed would wait. `rows_hint` (the candidates expected) sets how many partitions sample in parallel.
    """

    def __init__(self, cfg: BalanceConfig, work: str, entries: Iterable[str] | None = None,
                 rows_hint: int | None = None):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.work = work
        # Loaded here, at construction on the launcher, so a bad metadata file fails before any work starts.
        self.entries = tuple(_entry_list(cfg, entries))
        self.partitions = partitions_for(rows_hint or 0)

    # Any, not a tuple of PCollections: Beam warns about output hints that are not PCollections.
    def expand(self, batches: beam.PCollection) -> Any:
        matched = batches | "Match" >> beam.ParDo(_Match(self.entries, self.cfg.word_boundaries)).with_outputs(
            REJECTED, main="matched"
        )
        # The counts reach every worker whole, as one dict side input: fine up to ~500k entries (MetaCLIP's list);
        # a much longer list would want a join (CoGroupByKey per entry) instead. Each batch is counted first, so
        # what is combined is one Counter per batch, not one element per match.
        entries = matched.matched | "EntriesBefore" >> beam.Map(entry_counts)
        with small_grouping(entries.pipeline):  # one Counter per batch
            before = entries | "CountBefore" >> beam.CombineGlobally(SumCounts())
        spilled = (
            matched.matched
            | "ToPartition" >> beam.Map(_spill_partition, self.partitions)
            | "Spill" >> Spill(fsio.join(self.work, "balance"))
        )
        sampled = spilled | "Sample" >> beam.ParDo(_Sample(self.cfg), beam.pvalue.AsSingleton(before)).with_outputs(
            REJECTED, main="kept"
        )
        entries = sampled.kept | "EntriesAfter" >> beam.Map(entry_counts)
        with small_grouping(entries.pipeline):
            after = entries | "CountAfter" >> beam.CombineGlobally(SumCounts())
        return BalanceOutputs(sampled.kept, (matched[REJECTED], sampled[REJECTED]), before, after)


class WriteBalanceCounts(beam.PTransform):
    """BalanceQueries' outputs -> balance_counts.parquet in `root`, once, after both counts are complete."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root

    # Any, not BalanceOutputs: Beam warns about input hints that are not PCollections.
    def expand(self, balanced: Any) -> beam.PCollection:
        root = self.root
        return (
            balanced.kept.pipeline
            | "Once" >> beam.Create([None])
            | "Write"
            >> beam.Map(
                lambda _, before, after: write_balance_counts(root, before, after),
                beam.pvalue.AsSingleton(balanced.counts_before),
                beam.pvalue.AsSingleton(balanced.counts_after),
            )
        )
