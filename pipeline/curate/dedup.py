"""Candidate deduplication before fetching: normalized URLs, (URL, caption) pairs, and URLs of earlier datasets."""

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import apache_beam as beam
import idna

from pipeline import fsio
from pipeline.batches import PARTITION_ROWS, CountRows, PartitionRows, Rows, batched, partitions_for, split_by_partition
from pipeline.counters import Counters
from pipeline.rejection import rejection_row
from pipeline.shard_reader import iter_shard, list_shards
from pipeline.spill import Spill, read_spilled
from schemas import ShardEntry, fields, reasons
from schemas.reasons import REJECTED

MODES = ("url", "pair", "none")

# Query parameters that only say who sent the visitor; no server picks an image by them. Names are compared
# lowercased. Generic names (ref, source, si, spm) are left alone: on some sites they select content.
TRACKING_PARAMS = frozenset(
    "fbclid gclid gclsrc dclid gbraid wbraid msclkid mc_cid mc_eid igshid _ga _gl yclid ref_src twclid ttclid "
    "li_fat_id srsltid mkt_tok _hsenc _hsmi __hstc __hssc __hsfp oly_anon_id oly_enc_id vero_id rb_clickid "
    "irclickid wickedid _openstat".split()
)
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hsa_")  # Google Analytics, Matomo/Piwik, HubSpot ads campaigns
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_UNSAFE = re.compile(r"[^\x21-\x7e]+")  # non-ASCII, space and controls: what a client percent-encodes anyway


@dataclass(frozen=True)
class DedupConfig:
    by: str = "url"  # "url": one candidate per normalized URL; "pair": per (URL, caption); "none": keep all

    def __post_init__(self) -> None:
        if self.by not in MODES:
            raise ValueError(f"dedup mode must be one of {list(MODES)}, got {self.by!r}")


def _normalize_host(host: str) -> str:
    if not host.isascii():
        try:  # UTS 46 non-transitional, as browsers resolve it: straße.de stays apart from strasse.de
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            try:  # IDNA 2003 still maps names 2008 refuses (emoji domains), and browsers still resolve them
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                pass  # neither can encode it: the host stays as written (the URL is a comparison key, never fetched)
    return host.lower().removesuffix(".")


def _normalize_netloc(scheme: str, netloc: str) -> str:
    """userinfo@host:port with host lowercased (punycode) and a default or empty port dropped; ValueError if bad."""
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):  # IPv6 literal: its colons are not a port separator
        end = hostport.find("]")
        host, rest = hostport[: end + 1].lower(), hostport[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 host in {netloc!r}")
        port = rest[1:]
    else:
        host, _, port = hostport.partition(":")
        host = _normalize_host(host)
    if port:
        if not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError(f"bad port in {netloc!r}")
        port = str(int(port))  # "080" is port 80
    if not host:
        raise ValueError(f"no host in {netloc!r}")
    port = "" if port == _DEFAULT_PORTS.get(scheme) else port
    return f"{userinfo}{at}{host}{':' if port else ''}{port}"


def _encode(part: str) -> str:
    """Percent-encode what a client would, and upper-case escapes: RFC 3986 (6.2.2.1) makes %2f and %2F one."""
    part = _UNSAFE.sub(lambda m: quote(m.group(), safe=""), part)
    return _ESCAPE.sub(lambda m: m.group().upper(), part)


def _is_tracking(param: str) -> bool:
    name = param.partition("=")[0].lower()
    return name in TRACKING_PARAMS or name.startswith(TRACKING_PREFIXES)


def normalize_url(url: str) -> str:
    """The form of an absolute URL that its equivalent spellings share, for comparing; not for fetching.

    Lowercases scheme and host (IDNA to punycode, trailing dot dropped), drops a default port, the fragment,
    tracking parameters (TRACKING_PARAMS, TRACKING_PREFIXES) and empty ones, and turns an empty path into "/".
    The remaining parameters keep their order: sorting would merge URLs that some servers tell apart, and a
    merge loses an image for good while a missed one costs a fetch that image dedup (sha256) then catches.
    Anything unparsable, relative or without a host is returned unchanged: other stages reject it.
    """
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url.strip())
        if not parts.scheme or not parts.netloc:
            return url
        netloc = _normalize_netloc(parts.scheme, parts.netloc)
        path = _encode(parts.path) or "/"
        query = "&".join(_encode(p) for p in parts.query.split("&") if p and not _is_tracking(p))
    except ValueError:  # UnicodeError (lone surrogates) included
        return url
    return f"{parts.scheme}://{netloc}{path}{'?' if query else ''}{query}"


def caption_key(caption: str | None) -> str:
    """The caption as pair dedup compares it: casefolded, whitespace runs collapsed to one space."""
    return " ".join((caption or "").casefold().split())


def url_key(candidate: dict) -> str | None:
    """The candidate's normalized URL, or None when it has none to compare."""
    url = candidate.get(fields.URL)
    return normalize_url(url) if isinstance(url, str) and url.strip() else None


def dedup_key(candidate: dict, by: str) -> tuple:
    """The group a candidate is deduplicated in: (url,) or (url, caption); (None, key) when it has no URL.

    A candidate without a URL is in a group of its own: the source stage rejects those, not this one.
    """
    url = url_key(candidate)
    if url is None or by == "none":
        return (None, str(candidate.get(fields.KEY)))
    return (url, caption_key(candidate.get(fields.CAPTION))) if by == "pair" else (url,)


def _dump(candidate: dict) -> str:
    return json.dumps(candidate, sort_keys=True, default=str)


def _precedes(a: dict, b: dict) -> bool:
    """Whether `a` survives over `b`: the smaller key; equal keys (a broken contract) by their whole row."""
    ka, kb = str(a.get(fields.KEY)), str(b.get(fields.KEY))
    return ka < kb if ka != kb else _dump(a) < _dump(b)


def _same_row(a: dict, b: dict) -> bool:
    return a is b or (a.get(fields.KEY) == b.get(fields.KEY) and _dump(a) == _dump(b))


def judge_group(group: Iterable[dict], reason: str) -> Iterator[tuple[dict, dict | None]]:
    """Each candidate of one duplicate group, in order, with None for the survivor or else its rejection row.

    Two passes holding one candidate: a GroupByKey result may be re-iterated, but may not fit in memory. The
    second pass may yield new objects, so the survivor is found again by its row (as JSON, where NaN == NaN).
    """
    survivor = None
    for candidate in group:
        if survivor is None or _precedes(candidate, survivor):
            survivor = candidate
    if survivor is None:
        return
    detail, kept = f"duplicate of {survivor.get(fields.KEY)}", False
    for candidate in group:
        if not kept and _same_row(candidate, survivor):
            kept = True
            yield candidate, None
        else:
            yield candidate, rejection_row(candidate, reason, detail)


def _judge(group_key: tuple, group: Iterable[dict], by: str) -> Iterator[tuple[dict, dict | None]]:
    if group_key[0] is None:
        return ((candidate, None) for candidate in group)
    return judge_group(group, reasons.DUPLICATE_PAIR if by == "pair" else reasons.DUPLICATE_URL)


def dedup_keyed(keyed: Iterable[tuple[tuple, dict]], by: str) -> tuple[list[dict], list[dict]]:
    """(dedup_key, candidate) pairs judged in memory: (kept in input order, rejection rows)."""
    keyed = list(keyed)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (group_key, _) in enumerate(keyed):
        groups[group_key].append(i)
    verdicts: list[dict | None] = [None] * len(keyed)
    for group_key, indices in groups.items():
        judged = _judge(group_key, [keyed[i][1] for i in indices], by)
        for i, (_, row) in zip(indices, judged, strict=True):
            verdicts[i] = row
    kept = [c for (_, c), row in zip(keyed, verdicts, strict=True) if row is None]
    return kept, [row for row in verdicts if row is not None]


def dedup_pure(candidates: Iterable[dict], cfg: DedupConfig) -> tuple[list[dict], list[dict]]:
    """Single-process DedupCandidates, for reference and benchmarks: (kept in input order, rejection rows)."""
    return dedup_keyed(((dedup_key(c, cfg.by), c) for c in candidates), cfg.by)


def _count(kept: list[dict], rejected: list[dict], kept_counter: str, counters: Counters) -> None:
    # One namespace, the stage's, for both transforms: rejection counts then read as the stage's funnel.
    counters.inc(kept_counter, len(kept))
    for reason, n in Counter(row[fields.REASON] for row in rejected).items():
        counters.inc(reason, n)


def _with_keys(rows: Rows, by: str) -> Rows:
    return Rows((dedup_key(c, by), c) for c in rows)


def _partition_key(pair: tuple[tuple, dict]) -> str:
    group_key = pair[0]
    return group_key[0] if group_key[0] is not None else group_key[1]  # the URL: pair groups fall inside URL ones


class _PickSurvivors(beam.DoFn):
    def __init__(self, by: str):
        self.by = by

    def setup(self) -> None:
        self.counters = Counters(reasons.DEDUP)

    def process(self, element: tuple[int, list[str]]) -> Iterator:
        _, paths = element
        kept, rejected = dedup_keyed((pair for batch in read_spilled(paths) for pair in batch), self.by)
        _count(kept, rejected, "kept", self.counters)
        for part in batched(kept):
            yield part
        for part in batched(rejected):
            yield beam.pvalue.TaggedOutput(REJECTED, part)


class DedupCandidates(beam.PTransform):
    """Rows batches of candidates -> `kept` (one per normalized URL or pair, the smallest key) and `rejected` batches.

    Candidates go in sub-batches to partitions by a hash of their URL, through spill files under `work`
    (pipeline.spill: a shuffle of the rows would sit in the in-process runner's memory): each partition, a few
    hundred thousand rows (pipeline.batches.PARTITION_ROWS), holds every spelling of its URLs and is judged in memory.
    """

    def __init__(self, cfg: DedupConfig, work: str, rows_per_partition: int = PARTITION_ROWS,
                 rows_hint: int | None = None):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.work = work
        self.rows_per_partition = rows_per_partition
        # Rows known before the run (e.g. from Parquet footers) size the partitions at construction; without them the
        # stage counts its input first, which makes the in-process runner hold every row until the count is done.
        self.partitions = None if rows_hint is None else partitions_for(rows_hint, rows_per_partition)

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, batches: beam.PCollection) -> Any:
        keyed = batches | "Key" >> beam.Map(_with_keys, self.cfg.by)
        pick = beam.ParDo(_PickSurvivors(self.cfg.by)).with_outputs(REJECTED, main="kept")
        if self.cfg.by == "none":  # every candidate is a group of one: nothing to bring together
            return keyed | "Pick" >> beam.ParDo(_PickBatch()).with_outputs(REJECTED, main="kept")
        return (
            keyed
            | "Partition" >> PartitionRows(_partition_key, self.rows_per_partition, self.partitions)
            | "Spill" >> Spill(fsio.join(self.work, "dedup"))
            | "Pick" >> pick
        )


class _PickBatch(beam.DoFn):
    """Dedup by "none": every candidate kept as it comes, counted as the partitioned path counts."""

    def setup(self) -> None:
        self.counters = Counters(reasons.DEDUP)

    def process(self, pairs: Rows) -> Iterator[Rows]:
        kept = Rows(candidate for _, candidate in pairs)
        self.counters.inc("kept", len(kept))
        if kept:
            yield kept


def shard_urls(dataset: str | os.PathLike, shard: ShardEntry) -> Iterator[str]:
    """Normalized URLs of a shard's samples, from its Parquet (img2dataset's failed rows skipped) or .json members."""
    parquet, tar = fsio.join(dataset, shard.parquet.path), fsio.join(dataset, shard.tar.path)
    if fsio.is_file(parquet):
        names = fsio.parquet_schema(parquet).names
        if fields.URL not in names:
            raise ValueError(f"{parquet}: no {fields.URL} column, so its samples cannot be excluded")
        table = fsio.read_parquet(parquet, columns=[n for n in (fields.URL, fields.STATUS) if n in names])
        urls = table.column(fields.URL).to_pylist()
        status = table.column(fields.STATUS).to_pylist() if fields.STATUS in names else [None] * len(urls)
        rows = zip(urls, status, strict=True)
    elif fsio.is_file(tar):
        rows = ((s.row.get(fields.URL), s.row.get(fields.STATUS)) for s in iter_shard(tar))
    else:  # an exclusion that quietly excludes nothing would let old samples back in
        raise FileNotFoundError(f"{dataset}: neither {shard.parquet.path} nor {shard.tar.path} is there")
    for url, status in rows:
        if url and status in (None, fields.STATUS_SUCCESS):
            yield normalize_url(url)


def dataset_urls(path: str | os.PathLike) -> Iterator[str]:
    """Normalized URLs of every sample in a dataset (ours through its manifest, or img2dataset output)."""
    for shard in list_shards(path):
        yield from shard_urls(path, shard)


def first_seen(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """(normalized URL, dataset) pairs -> URL: the smallest dataset name holding it (the one a rejection names)."""
    seen: dict[str, str] = {}
    for url, dataset in pairs:
        if url not in seen or dataset < seen[url]:
            seen[url] = dataset
    return seen


def judge_seen(candidates: Iterable[dict], seen: Mapping[str, str]) -> tuple[list[dict], list[dict]]:
    """(kept in input order, SEEN_BEFORE rows naming the dataset) for candidates against earlier datasets' URLs."""
    kept, rejected = [], []
    for candidate in candidates:
        dataset = seen.get(url_key(candidate) or "")  # no URL: no earlier sample can share it
        if dataset is None:
            kept.append(candidate)
        else:
            rejected.append(rejection_row(candidate, reasons.SEEN_BEFORE, f"in {dataset}"))
    return kept, rejected


def exclude_seen_pure(candidates: Iterable[dict], datasets: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Single-process ExcludeSeen: (kept in input order, rejection rows); holds every earlier URL in memory."""
    return judge_seen(candidates, first_seen((url, d) for d in map(str, datasets) for url in dataset_urls(d)))


def _dataset_shards(dataset: str) -> list[tuple[str, ShardEntry]]:
    return [(dataset, shard) for shard in list_shards(dataset)]


def _keyed_shard_urls(job: tuple[str, ShardEntry]) -> Iterator[tuple[str, str]]:
    dataset, shard = job
    return ((url, dataset) for url in shard_urls(dataset, shard))


_CANDIDATES, _SEEN = "c", "s"  # what a spilled batch holds: candidates, or (URL, dataset) pairs of earlier samples


def _split_seen(job: tuple[str, ShardEntry], partitions: int) -> Iterator[tuple[int, tuple[str, Rows]]]:
    for partition, pairs in split_by_partition(_keyed_shard_urls(job), lambda pair: pair[0], partitions):
        yield partition, (_SEEN, pairs)


class _JudgeSeen(beam.DoFn):
    def setup(self) -> None:
        self.counters = Counters(reasons.DEDUP)

    def process(self, element: tuple[int, list[str]]) -> Iterator:
        _, paths = element
        candidates, seen = [], []
        for kind, rows in read_spilled(paths):
            (candidates if kind == _CANDIDATES else seen).extend(rows)
        kept, rejected = judge_seen(candidates, first_seen(seen))
        _count(kept, rejected, "unseen", self.counters)
        for part in batched(kept):
            yield part
        for part in batched(rejected):
            yield beam.pvalue.TaggedOutput(REJECTED, part)


def _url_or_key(candidate: dict) -> str:
    return url_key(candidate) or str(candidate.get(fields.KEY))


class ExcludeSeen(beam.PTransform):
    """Rows batches -> `kept` and `rejected` (SEEN_BEFORE) batches: candidates whose normalized URL an earlier
    dataset holds. A join on hash partitions of the URL, not a side input (earlier datasets need not fit in memory):
    candidates and earlier URLs reach their partition through spill files under `work` (pipeline.spill), sized by
    the candidates (`rows_hint`, else counted) and the earlier datasets' manifests together.
    """

    def __init__(self, datasets: Sequence[str | os.PathLike], work: str, rows_per_partition: int = PARTITION_ROWS,
                 rows_hint: int | None = None):  # fmt: skip
        super().__init__()
        self.datasets = tuple(str(d) for d in datasets)
        self.work = work
        self.rows_per_partition = rows_per_partition
        # Listing fails now, not after the pipeline has run for an hour; the manifests also say how many URLs come.
        self.seen_rows = sum(shard.rows for dataset in self.datasets for shard in list_shards(dataset))
        self.rows_hint = rows_hint

    def expand(self, batches: beam.PCollection) -> Any:
        per = self.rows_per_partition
        if self.rows_hint is not None:
            parts = partitions_for(self.rows_hint + self.seen_rows, per)
        else:
            seen_rows = self.seen_rows
            total = batches | "CountCandidates" >> CountRows() | "AndSeen" >> beam.Map(lambda n: n + seen_rows)
            parts = beam.pvalue.AsSingleton(total | "Parts" >> beam.Map(partitions_for, per))
        seen = (
            batches.pipeline
            | "Datasets" >> beam.Create(self.datasets)
            | "Shards" >> beam.FlatMap(_dataset_shards)
            | "Spread" >> beam.Reshuffle()  # a dataset's shards are read in parallel, not by one worker
            | "SplitSeen" >> beam.FlatMap(_split_seen, parts)
        )
        candidates = (
            batches
            | "Partition" >> PartitionRows(_url_or_key, partitions=parts)
            | "Tag" >> beam.MapTuple(lambda partition, rows: (partition, (_CANDIDATES, rows)))
        )
        spilled = (candidates, seen) | "Spill" >> Spill(fsio.join(self.work, "seen"))
        return spilled | "Judge" >> beam.ParDo(_JudgeSeen()).with_outputs(REJECTED, main="kept")
