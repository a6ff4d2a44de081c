"""WARC/WAT extraction from archives the test writes with warcio: HTML, WAT links, bad records, truncation."""

import gzip
import io
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.sources.warc import PAGES, ReadArchives, iter_archive, wat_page
from schemas import fields, reasons

HTML = b'<html lang="en"><title>Cats</title><img src="/img/cat.jpg" alt="a grey cat &amp; a box"></html>'


def _response(w: WARCWriter, uri: str, body: bytes, ctype: str) -> None:
    hh = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
    w.write_record(w.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=hh))


def _metadata(w: WARCWriter, uri: str, payload: bytes) -> None:
    rec = w.create_warc_record(uri, "metadata", payload=io.BytesIO(payload), warc_content_type="application/json")
    w.write_record(rec)


def _wat(links: list[dict], base: str | None = None) -> bytes:
    head = {"Title": "Dogs"} | ({"Base": base} if base else {})
    html_meta = {"Head": head, "Links": links}
    return json.dumps(
        {"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": html_meta}}}}
    ).encode()


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "CC-TEST-00000.warc.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        _response(w, "http://cats.example/index.html", HTML, "text/html; charset=utf-8")
        _response(w, "http://cats.example/cat.jpg", b"\xff\xd8\xff binary", "image/jpeg")
        w.write_record(
            w.create_warc_record("http://cats.example/", "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
        )
        links = [
            {"path": "IMG@/src", "url": "dog.jpg", "alt": " a happy dog "},
            {"path": "IMG@/src", "url": "data:image/png;base64,AAAA"},
            {"path": "A@/href", "url": "/about"},
            {"path": "IMG@/src", "url": "//cdn.example/puppy.png"},
        ]
        _metadata(w, "http://dogs.example/a/page.html", _wat(links, base="/b/"))
        _metadata(w, "http://broken.example/", b"{not json")
        _metadata(w, "http://nohtml.example/", json.dumps({"Envelope": {}}).encode())
    return path


def test_iter_archive_html_and_wat(archive):
    with open(archive, "rb") as f:
        items = list(iter_archive(f, "warc:test"))
    cands = [row for kind, row in items if kind == "candidate"]
    pages = [(row[fields.PAGE_URL], row[fields.STATUS], row[fields.IMAGES]) for kind, row in items if kind == "page"]
    assert [(c[fields.URL], c[fields.CAPTION], c[fields.PAGE_TITLE]) for c in cands] == [
        ("http://cats.example/img/cat.jpg", "a grey cat & a box", "Cats"),
        ("http://dogs.example/b/dog.jpg", "a happy dog", "Dogs"),
        ("http://cdn.example/puppy.png", None, "Dogs"),
    ]
    assert cands[0][fields.PAGE_LANG] == "en" and cands[0][fields.SOURCE] == "warc:test"
    assert pages == [
        ("http://cats.example/index.html", "success", 1),
        ("http://cats.example/cat.jpg", reasons.NOT_HTML, 0),
        ("http://dogs.example/a/page.html", "success", 2),
        ("http://broken.example/", reasons.MALFORMED_RECORD, 0),
        ("http://nohtml.example/", reasons.NOT_HTML, 0),
    ]


def test_truncated_and_garbage_archives_are_not_fatal(archive, tmp_path):
    data = gzip.decompress(archive.read_bytes())
    cut = data[: data.index(b"WARC/1.0", 200) + 50]  # the second record's header breaks off
    items = list(iter_archive(io.BytesIO(cut), "warc:cut"))
    assert [r[fields.URL] for k, r in items if k == "candidate"] == ["http://cats.example/img/cat.jpg"]
    items = list(iter_archive(io.BytesIO(b"this is not a warc file\n" * 50), "warc:junk"))
    assert [(k, r[fields.STATUS]) for k, r in items] == [("page", reasons.MALFORMED_RECORD)]


def test_wat_page_ignores_non_html():
    assert wat_page({"Envelope": {"Payload-Metadata": {}}}, "http://x/") is None


def test_read_archives_beam_stage(archive, tmp_path):
    (tmp_path / "junk.warc").write_bytes(b"garbage" * 100)
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | ReadArchives(str(tmp_path / "*.warc*"))
        urls = out.candidates | beam.Map(lambda c: c[fields.URL])
        statuses = out[PAGES] | beam.Map(lambda r: r[fields.STATUS])
        assert_that(
            urls,
            equal_to(
                ["http://cats.example/img/cat.jpg", "http://dogs.example/b/dog.jpg", "http://cdn.example/puppy.png"]
            ),
            label="candidates",
        )
        expected = ["success", "success", reasons.NOT_HTML, reasons.NOT_HTML] + [reasons.MALFORMED_RECORD] * 2
        assert_that(statuses, equal_to(expected), label="pages")
