"""Common Crawl WARC (HTML responses) and WAT (link metadata) records into candidates, as a Beam stage."""

import json
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urljoin

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.counters import Counters
from pipeline.sources.html import ImageRef, Page, absolute_url, extract_page, page_candidates
from pipeline.sources.url_lists import match_paths
from schemas import fields, reasons

PAGES = "pages"
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _page_log(url: str, status: str, detail: str | None = None, images: int = 0, links: int = 0) -> dict:
    return {
        fields.PAGE_URL: url or "",
        fields.DEPTH: 0,
        fields.STATUS: status,
        fields.DETAIL: detail,
        fields.IMAGES: images,
        fields.LINKS: links,
    }


def wat_page(meta: dict, target_uri: str) -> Page | None:
    """The page a WAT metadata record describes, with its IMG@/src links as images; None if it has no HTML part."""
    html_meta = meta.get("Envelope", {}).get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {})
    html_meta = html_meta.get("HTML-Metadata") if isinstance(html_meta, dict) else None
    if not isinstance(html_meta, dict):
        return None
    head = html_meta.get("Head") or {}
    base = urljoin(target_uri, head.get("Base") or "") if isinstance(head, dict) else target_uri
    images, links = [], []
    for link in html_meta.get("Links") or []:
        if not isinstance(link, dict):
            continue
        url = absolute_url(base, link.get("url"))
        if url is None:
            continue
        if link.get("path") == "IMG@/src":
            images.append(ImageRef(url, (link.get("alt") or "").strip() or None, link.get("title") or None, None))
        elif str(link.get("path", "")).startswith("A@"):
            links.append(url)
    title = head.get("Title") if isinstance(head, dict) else None
    return Page(url=target_uri, title=title, lang=None, images=tuple(images), links=tuple(links))


def _record_page(record, target: str) -> tuple[Page | None, str | None]:
    """(page, None) for a usable record, (None, reason) for one to count and skip."""
    if record.record_type == WarcRecordType.response:
        ctype = (record.http_headers.get("Content-Type", "") if record.http_headers else "").split(";")[0].strip()
        if ctype.lower() not in _HTML_TYPES:
            return None, reasons.NOT_HTML
        return extract_page(record.reader.read(), target), None
    try:
        meta = json.loads(record.reader.read())
    except (ValueError, UnicodeDecodeError):
        return None, reasons.MALFORMED_RECORD
    page = wat_page(meta, target) if isinstance(meta, dict) else None
    return (page, None) if page is not None else (None, reasons.NOT_HTML)


def iter_archive(stream: BinaryIO, source: str) -> Iterator[tuple[str, dict]]:
    """("candidate", row) and ("page", PAGE_SCHEMA row) items from a WARC or WAT file, gzipped or not.

    A bad record is a page row with its reason; a file that breaks mid-way ends with a malformed_record row.
    """
    kinds = WarcRecordType.response | WarcRecordType.metadata
    index = -1
    try:
        for index, record in enumerate(ArchiveIterator(stream, record_types=kinds, parse_http=True)):
            target = record.headers.get("WARC-Target-URI", "")
            try:
                page, reason = _record_page(record, target)
            except Exception as e:  # a hostile record must not end the file; it is logged with its reason
                page, reason = None, reasons.MALFORMED_RECORD
                detail = f"{type(e).__name__}: {e}"[:200]
            else:
                detail = None
            if page is None:
                yield "page", _page_log(target, reason, detail)
                continue
            candidates = page_candidates(page, source)
            for c in candidates:
                c[fields.SOURCE_ROW] = index
                yield "candidate", c
            yield "page", _page_log(target, fields.STATUS_SUCCESS, None, len(candidates), len(page.links))
    except (OSError, ValueError) as e:
        yield "page", _page_log(f"{source}#{index + 1}", reasons.MALFORMED_RECORD, f"archive unreadable: {e}"[:200])


class _ReadArchive(beam.DoFn):
    def __init__(self):
        self.records = Metrics.counter("warc", "records")

    def setup(self) -> None:
        self.by_status = Counters("warc")

    def process(self, path: str) -> Iterator:
        source = f"warc:{path.rsplit('/', 1)[-1]}"
        # fastwarc undoes gzip itself (per member, as Common Crawl writes them), so Beam must not.
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            for kind, row in iter_archive(stream, source):
                if kind == "candidate":
                    yield row
                else:
                    self.records.inc()
                    self.by_status.inc(row[fields.STATUS])
                    yield beam.pvalue.TaggedOutput(PAGES, row)


class ReadArchives(beam.PTransform):
    """WARC/WAT files -> `candidates` (main) and `pages` (PAGE_SCHEMA rows, one per record, with its status)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        return (
            pbegin
            | "Files" >> beam.Create(match_paths(self.pattern))
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadArchive()).with_outputs(PAGES, main="candidates")
        )
