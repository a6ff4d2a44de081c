"""URL + caption lists (Parquet, CSV, TSV, JSONL; gzipped too) read into candidates, as a Beam stage."""

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import fsio
from pipeline.batches import Rows
from pipeline.rejection import Rejected, rejection_row
from schemas import CANDIDATE_SCHEMA, fields, make_key, reasons
from schemas.reasons import REJECTED

FORMATS = ("parquet", "csv", "tsv", "jsonl")
# Column names users' lists come with (LAION: URL/TEXT; img2dataset examples: url/caption; CC12M: url/caption).
URL_COLUMNS = ("url", "URL", "image_url", "img_url", "link")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "alt_text", "description")
# What `wit crawl` and `wit extract` write into their --out folder beside pages-*.parquet: a folder given as a list
# means these files.
CANDIDATE_FILES = "candidates-*.parquet"


@dataclass(frozen=True)
class UrlListConfig:
    pattern: str  # a path, glob or folder of candidate files, local or any Beam filesystem (gs://, s3://)
    format: str = "auto"  # from the suffix (.gz ignored) unless given
    url_col: str | None = None  # None: the first of URL_COLUMNS present; for header-less files a 0-based index
    caption_col: str | None = None
    header: bool | None = None  # CSV/TSV: None detects (a first row holding a URL is data, as in CC3M's TSV)

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format must be auto or one of {FORMATS}, got {self.format!r}")


def detect_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for fmt, suffixes in {
        "parquet": (".parquet",),
        "csv": (".csv",),
        "tsv": (".tsv", ".txt"),
        "jsonl": (".jsonl", ".json"),
    }.items():
        if name.endswith(suffixes):
            return fmt
    raise ValueError(f"cannot tell the format of {path!r} from its name; pass --format")


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{path}: no {what} column {wanted!r}; columns are {columns}")
        return wanted
    found = next((c for c in candidates if c in columns), None)
    if found is None and what == "URL":
        raise ValueError(f"{path}: no URL column among {columns}; pass --url-col")
    return found


def _looks_like_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://", "//"))


def _delimited_rows(text: io.TextIOBase, delimiter: str, header: bool | None) -> Iterator[dict]:
    reader = csv.reader(text, delimiter=delimiter)
    first = next(reader, None)
    if first is None:
        return
    if header is None:
        header = not any(_looks_like_url(v) for v in first)
    if header:
        names = first
    else:
        names = [str(i) for i in range(len(first))]
        yield dict(zip(names, first, strict=False))
    for values in reader:
        yield dict(zip(names, values, strict=False))


def iter_rows(path: str, fmt: str, header: bool | None = None) -> Iterator[dict]:
    """Rows of one list file as dicts, streamed; a .gz suffix means gzip."""
    # Beam's own decompressing wrapper is not an io.RawIOBase, which pyarrow and TextIOWrapper need.
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stored:
        raw = gzip.GzipFile(fileobj=stored) if path.lower().endswith(".gz") else stored
        if fmt == "parquet":
            for batch in pq.ParquetFile(raw).iter_batches(batch_size=8192):
                yield from batch.to_pylist()
            return
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "jsonl":
            for line in text:
                line = line.strip()
                if line:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    yield row if isinstance(row, dict) else {}
            return
        yield from _delimited_rows(text, "," if fmt == "csv" else "\t", header)


def resolve_columns(first_row: dict, cfg: UrlListConfig, path: str) -> tuple[str, str | None]:
    """(url column, caption column) for a file, given its first row; header-less files guess by content."""
    columns = list(first_row)
    if columns and all(c.isdigit() for c in columns) and cfg.url_col is None:
        url_col = next((c for c in columns if _looks_like_url(str(first_row[c] or ""))), None)
        if url_col is None:
            raise ValueError(f"{path}: header-less file with no URL in its first row; pass --url-col")
        caption_col = cfg.caption_col or next((c for c in columns if c != url_col), None)
        return url_col, caption_col
    url_col = _pick(columns, cfg.url_col, URL_COLUMNS, "URL", path)
    return url_col, _pick(columns, cfg.caption_col, CAPTION_COLUMNS, "caption", path)


def candidate_from_row(row: dict, source: str, index: int, url_col: str, caption_col: str | None) -> dict:
    """One candidate from one list row; raises Rejected for rows with no usable URL."""
    url = row.get(url_col)
    url = url.strip() if isinstance(url, str) else ""
    caption = row.get(caption_col) if caption_col else None
    caption = caption if isinstance(caption, str) else (None if caption is None else str(caption))
    if _is_our_candidate(row):
        # A candidates file written by `wit crawl`/`wit extract`: keep its key, page context and provenance.
        candidate = {name: row.get(name) for name in CANDIDATE_SCHEMA.names} | {
            fields.URL: url,
            fields.CAPTION: caption,
        }
    else:
        candidate = {
            fields.KEY: make_key(source, index, url),
            fields.URL: url,
            fields.CAPTION: caption,
            fields.SOURCE: source,
            fields.SOURCE_ROW: index,
        }
    if not url:
        raise _with_candidate(Rejected(reasons.MALFORMED_ROW, "no URL"), candidate)
    if url.startswith("//"):
        candidate[fields.URL] = url = "http:" + url
    if not url.lower().startswith(("http://", "https://")):
        raise _with_candidate(Rejected(reasons.INVALID_URL, url[:200]), candidate)
    return candidate


def _is_our_candidate(row: dict) -> bool:
    return all(name in row for name in CANDIDATE_SCHEMA.names) and isinstance(row.get(fields.KEY), str)


def _with_candidate(e: Rejected, candidate: dict) -> Rejected:
    e.candidate = candidate
    return e


class _ReadListFile(beam.DoFn):
    def __init__(self, cfg: UrlListConfig, batch_rows: int = 0):
        self.cfg = cfg
        self.batch_rows = batch_rows
        self.read = Metrics.counter("sources", "rows_read")
        self.bad = Metrics.counter("sources", "rows_rejected")

    def process(self, path: str) -> Iterator:
        fmt = detect_format(path) if self.cfg.format == "auto" else self.cfg.format
        source = f"urls:{path.rsplit('/', 1)[-1]}"
        columns, batch = None, Rows()
        for index, row in enumerate(iter_rows(path, fmt, self.cfg.header)):
            if columns is None and row:
                columns = resolve_columns(row, self.cfg, path)
            self.read.inc()
            try:
                candidate = candidate_from_row(row, source, index, *(columns or ("", None)))
            except Rejected as e:
                self.bad.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, rejection_row(e.candidate, e.reason, e.detail))
                continue
            if not self.batch_rows:
                yield candidate
                continue
            batch.append(candidate)
            if len(batch) >= self.batch_rows:
                yield batch
                batch = Rows()
        if batch:
            yield batch


def match_paths(pattern: str) -> list[str]:
    """The files a pattern names, sorted so that runs are reproducible; an error if there are none."""
    result = FileSystems.match([pattern])[0]
    paths = sorted(m.path for m in result.metadata_list)
    if not paths:
        raise FileNotFoundError(f"no files match {pattern!r}")
    return paths


def list_paths(pattern: str) -> list[str]:
    """The list files a --candidates value names: a file, a glob, or a folder of our candidate files (crawl or
    extract output), which are CANDIDATE_FILES in it; an error if there are none."""
    if not any(c in pattern for c in "*?[") and fsio.is_dir(pattern):
        try:
            return match_paths(fsio.join(pattern, CANDIDATE_FILES))
        except FileNotFoundError:
            raise FileNotFoundError(f"{pattern}: a folder without {CANDIDATE_FILES}; give a file or glob") from None
    return match_paths(pattern)


def counted_rows(cfg: UrlListConfig) -> int | None:
    """The rows the lists hold, when their footers say so cheaply (uncompressed Parquet); None otherwise.

    Read at launch, so that stages sized by the row count (the dedup shuffle's partitions) need not wait for a
    count of the data itself: that wait splits the curation into two passes over every row."""
    total = 0
    for path in list_paths(cfg.pattern):
        fmt = detect_format(path) if cfg.format == "auto" else cfg.format
        if fmt != "parquet" or path.lower().endswith(".gz"):
            return None
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stored:
                total += pq.ParquetFile(stored).metadata.num_rows
        except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError; the read itself reports the file
            return None
    return total


def count_rows(cfg: UrlListConfig) -> int:
    """The rows the lists hold, each of which becomes one candidate or one rejection: from Parquet footers where
    they say, else by streaming through the file (no row is kept). Jobs size their buckets by it at launch, so the
    bucket count is known before anything runs and is the same on a rerun."""
    footers = counted_rows(cfg)
    if footers is not None:
        return footers
    total = 0
    for path in list_paths(cfg.pattern):
        fmt = detect_format(path) if cfg.format == "auto" else cfg.format
        total += sum(1 for _ in iter_rows(path, fmt, cfg.header))
    return total


class ReadUrlLists(beam.PTransform):
    """Candidates from URL lists; outputs `candidates` (main) and `rejected` (REJECTION_SCHEMA rows).

    A file is the unit of parallelism: LAION-style metadata comes as many files, and per-file reading keeps
    row numbers (and so keys) stable. With `batch_rows`, candidates come as Rows batches of that many
    (pipeline.batches); rejections stay one row per element either way.
    """

    def __init__(self, cfg: UrlListConfig, batch_rows: int = 0):
        super().__init__()
        self.cfg = cfg
        self.batch_rows = batch_rows

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        paths = list_paths(self.cfg.pattern)
        return (
            pbegin
            | "Files" >> beam.Create(paths)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadListFile(self.cfg, self.batch_rows)).with_outputs(REJECTED, main="candidates")
        )
