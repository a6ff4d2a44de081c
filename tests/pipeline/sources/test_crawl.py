"""The crawl stage over real HTTP: BFS depth, domain limits, robots, each page fetched once, candidates."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.fetch.http import FetchConfig
from pipeline.sources.crawl import CrawlConfig, CrawlPages, allowed_netlocs, link_allowed
from schemas import fields, reasons

SITE = {
    "/robots.txt": ("text/plain", "User-agent: *\nDisallow: /private/\n"),
    "/a.html": (
        "text/html",
        '<title>A</title><img src="1.jpg" alt="one"><a href="b.html">b</a><a href="/c.html">c</a>'
        '<a href="/private/p.html">p</a><a href="http://elsewhere.invalid/x.html">x</a>',
    ),
    "/b.html": ("text/html", '<img src="//HOST/2.jpg" alt="two"><a href="/a.html">a</a><a href="/c.html#frag">c</a>'),
    "/c.html": ("text/html", '<img srcset="3s.jpg 100w, 3.jpg 900w"><a href="/d.html">d</a><a href="/gone.html">g</a>'),
    "/d.html": ("text/html", '<img src="4.jpg" alt="four">'),
    "/private/p.html": ("text/html", '<img src="5.jpg" alt="five">'),
    "/notes.txt": ("text/plain", "not html"),
}


class _Site(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        ctype, body = SITE.get(self.path, ("text/html", None))
        data = (body or "missing").replace("HOST", self.headers["Host"]).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_link_allowed():
    allowed = allowed_netlocs(["http://127.0.0.1:8000/x"], CrawlConfig())
    assert link_allowed("http://127.0.0.1:8000/y", allowed)
    assert not link_allowed("http://127.0.0.1:8001/y", allowed)
    domains = allowed_netlocs([], CrawlConfig(allowed_domains=("Example.com",)))
    assert link_allowed("https://img.example.com/a", domains)
    assert not link_allowed("https://badexample.com/a", domains)
    assert not link_allowed("ftp://example.com/a", domains)
    # Links a page may hold that urllib cannot parse are not followed (and do not fail the crawl).
    assert not link_allowed("http://[example.com/a", domains) and not link_allowed("http://example.com:99999/", domains)


@pytest.mark.parametrize("depth", [1, 2])
def test_crawl_bfs(site, depth):
    _Site.hits.clear()
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | CrawlPages([f"{site}/a.html"], CrawlConfig(depth=depth, threads=4), FetchConfig(allow_private=True))
        pages = out["pages"] | beam.Map(
            lambda r: (r[fields.PAGE_URL].removeprefix(site), r[fields.DEPTH], r[fields.STATUS])
        )
        cands = out["candidates"] | beam.Map(lambda c: (c[fields.URL].removeprefix(site), c[fields.CAPTION]))
        expected_pages = [
            ("/a.html", 0, "success"),
            ("/b.html", 1, "success"),
            ("/c.html", 1, "success"),
            ("/private/p.html", 1, reasons.ROBOTS_DISALLOWED),
        ]
        expected_cands = [("/1.jpg", "one"), ("/2.jpg", "two"), ("/3.jpg", None)]
        if depth == 2:
            expected_pages += [("/d.html", 2, "success"), ("/gone.html", 2, reasons.HTTP_4XX)]
            expected_cands += [("/4.jpg", "four")]
        assert_that(pages, equal_to(expected_pages), label="pages")
        assert_that(cands, equal_to(expected_cands), label="candidates")
    fetched = {path: n for path, n in _Site.hits.items() if path != "/robots.txt"}
    assert all(n == 1 for n in fetched.values()), fetched  # never a page twice
    assert "/private/p.html" not in fetched
