"""The synthetic web over real HTTP: pages as the truth describes them, every fault served as claimed, the server."""

import hashlib
import http.client
import io
import json
import socket
import struct
import time
import urllib.robotparser
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.fetch.politeness import USER_AGENT_TOKEN
from synthweb import serve_web
from synthweb.faults import robots_txt
from synthweb.spec import CONTENT_TYPES, PIL_FORMATS

_PIL_TO_EXT = {v: k for k, v in PIL_FORMATS.items()}


def _get(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lang = self.base = None
        self.imgs, self.links, self.texts = [], [], {"title": [], "figcaption": []}
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        elif tag == "base":
            self.base = a["href"]
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag in self.texts:
            self._in = tag
            self.texts[tag].append("")

    def handle_data(self, data):
        if self._in:
            self.texts[self._in][-1] += data

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None


@pytest.fixture(scope="module")
def truth(served_web):
    return served_web.truth()


@pytest.fixture(scope="module")
def by_fault(truth):
    out = {}
    for r in truth:
        out.setdefault(r["fault"], []).append(r)
    return out


@pytest.fixture(scope="module")
def pages(served_web, truth):
    """Every served page: (truth row, raw HTML, parsed)."""
    out = []
    for r in truth:
        if r["kind"] == "page" and r["status"] == 200:
            status, headers, body = _get(r["url"])
            assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
            parser = _PageParser()
            html = body.decode()
            parser.feed(html)
            out.append((r, html, parser))
    return out


def test_pages_reference_exactly_what_the_truth_says(truth, pages):
    by_id = {r["id"]: r for r in truth}
    on_page: dict[str, set] = {}
    for r in truth:
        if r["page"]:
            on_page.setdefault(r["page"], set()).add(r["url"])
    assert len(pages) >= 12
    for row, html, p in pages:
        assert "{{host" not in html
        base = urljoin(row["url"], p.base) if p.base else row["url"]
        assert (p.lang, p.texts["title"]) == (row["lang"], [row["title"]])
        found = set()
        for img in p.imgs:
            src = by_id_url = urljoin(base, img["src"])
            src_row = next(r for r in truth if r["url"] == by_id_url)
            assert img.get("alt") == (src_row["caption"] if src_row["has_alt"] else None)
            assert img.get("title") == src_row["title"]
            found.add(src)
            if "srcset" in img:
                candidates = [c.rsplit(" ", 1) for c in img["srcset"].split(", ")]
                urls = {urljoin(base, u): int(w.rstrip("w")) for u, w in candidates}
                found |= set(urls)
                best = max(urls, key=urls.get)
                assert next(r for r in truth if r["url"] == best)["srcset_best"]
        assert found == on_page.get(row["id"], set()), row["id"]
        figcaptions = {r["figcaption"] for r in truth if r["page"] == row["id"] and r["ref"] == "figure"}
        assert set(p.texts["figcaption"]) == figcaptions
        assert {urljoin(base, href) for href in p.links} == {by_id[i]["url"] for i in row["links"]}


def test_pages_use_every_url_style_and_entity(served_web, pages):
    html = "\n".join(h for _, h, _ in pages)
    for needle in ("&amp;", "&eacute;", "&#39;", "srcset=", "<figure>", "<figcaption>", "<base href=", 'lang="fr"'):
        assert needle in html, needle
    ports = {urlsplit(u).port for u in served_web.base_urls}
    assert all(f"http://127.0.0.1:{port}/" in html for port in ports)
    srcs = [img["src"] for _, _, p in pages for img in p.imgs]
    assert any(s.startswith("//127.0.0.1:") for s in srcs)  # protocol-relative
    assert any(s.startswith("/") and not s.startswith("//") for s in srcs)  # root-relative
    assert any(not s.startswith(("/", "http")) for s in srcs)  # relative


def test_robots_txt(served_web):
    for host in range(len(served_web.base_urls)):
        status, headers, body = _get(served_web.url(host, "/robots.txt"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert body.decode() == robots_txt(host)
    rules = urllib.robotparser.RobotFileParser()
    rules.parse(robots_txt(0).splitlines())
    assert not rules.can_fetch("*", served_web.url(0, "/private/x.jpg"))
    assert not rules.can_fetch(USER_AGENT_TOKEN, served_web.url(0, "/no-wit/img-0.jpg"))
    assert rules.can_fetch("otherbot", served_web.url(0, "/no-wit/img-0.jpg"))


def test_images_decode_to_what_the_truth_records(served_web, truth):
    rows = [r for r in truth if r["kind"] == "image" and r["fault"] == "none"]
    assert len(rows) > 100
    conns = {
        h: http.client.HTTPConnection(urlsplit(u).hostname, urlsplit(u).port)
        for h, u in enumerate(served_web.base_urls)
    }
    try:
        for r in rows:
            conn = conns[r["host"]]
            conn.request("GET", r["path"])
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPES[r["format"]]
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            img = Image.open(io.BytesIO(data))
            assert (_PIL_TO_EXT[img.format], img.size) == (r["format"], (r["width"], r["height"]))
    finally:
        for conn in conns.values():
            conn.close()


def test_status_faults(by_fault):
    for fault, status in (("http_404", 404), ("http_500", 500)):
        for r in by_fault[fault]:
            got, headers, body = _get(r["url"])
            assert got == status == r["status"] and int(headers["Content-Length"]) == len(body)


def test_429_once_then_success_and_always_429(served_web, by_fault):
    served_web.reset()
    retry_after = str(json.loads((served_web.web_dir / "site.json").read_text())["config"]["retry_after"])
    for r in by_fault["retry_429"]:
        status, headers, _ = _get(r["url"])
        assert (status, headers["Retry-After"]) == (429, retry_after)
        status, headers, body = _get(r["url"])
        assert status == 200 and hashlib.sha256(body).hexdigest() == r["sha256"]
        assert served_web.hits()[(r["host"], r["path"])] == 2
    for r in by_fault["always_429"]:
        for _ in range(3):
            status, headers, _ = _get(r["url"])
            assert (status, headers["Retry-After"]) == (429, retry_after)


def test_slow_url_is_slow_and_others_are_not(served_web, by_fault):
    delay = json.loads((served_web.web_dir / "site.json").read_text())["config"]["slow_delay"]
    (r,) = by_fault["slow"]
    t0 = time.monotonic()
    status, _, body = _get(r["url"])
    assert status == 200 and time.monotonic() - t0 >= delay - 0.05 and len(body) == r["bytes"]
    t0 = time.monotonic()
    _get(served_web.url(0, "/robots.txt"))
    assert time.monotonic() - t0 < 0.5


def test_redirects_and_the_loop(served_web, by_fault, truth):
    for fault, status in (("redirect_301", 301), ("redirect_302", 302)):
        for r in by_fault[fault]:
            got, headers, _ = _get(r["url"])
            assert (got, headers["Location"]) == (status, r["target_url"])
            got, headers, body = _get(r["target_url"])
            assert got == 200 and headers["Content-Type"].startswith("image/")
            assert Image.open(io.BytesIO(body)).size == (r["width"], r["height"])
    assert any(urlsplit(r["url"]).port != urlsplit(r["target_url"]).port for r in by_fault["redirect_302"])
    start = next(r for r in by_fault["redirect_loop"] if r["page"])
    url, seen = start["url"], []
    for _ in range(4):
        status, headers, _ = _get(url)
        assert status == 302
        seen.append(url)
        url = urljoin(url, headers["Location"])
    assert seen[0] == seen[2] == start["url"] and seen[1] == start["target_url"] != seen[0]


def test_opt_out_headers(by_fault):
    expected = {
        "noai": "noai",
        "noai_our_agent": f"{USER_AGENT_TOKEN}: noimageai",
        "noai_other_agent": "otherbot: noai",
    }
    for fault, value in expected.items():
        (r,) = by_fault[fault]
        status, headers, body = _get(r["url"])
        assert status == 200 and headers.get_all("X-Robots-Tag") == [value]
        assert Image.open(io.BytesIO(body)).size == (r["width"], r["height"])


def test_wrong_content_types(by_fault):
    (r,) = by_fault["image_as_html"]
    status, headers, body = _get(r["url"])
    assert headers["Content-Type"].startswith("text/html") and Image.open(io.BytesIO(body)).format == "JPEG"
    (r,) = by_fault["html_as_jpg"]
    status, headers, body = _get(r["url"])
    assert r["path"].endswith(".jpg") and headers["Content-Type"].startswith("text/html")
    assert body.startswith(b"<!DOCTYPE html>")


def test_broken_images(by_fault):
    for fault in ("truncated", "corrupt"):
        (r,) = by_fault[fault]
        status, headers, body = _get(r["url"])
        assert status == 200 and headers["Content-Type"].startswith("image/")
        img = Image.open(io.BytesIO(body))
        assert img.size == (r["width"], r["height"])
        with pytest.raises((OSError, SyntaxError, ValueError)):
            img.load()
    (r,) = by_fault["tiny"]
    assert Image.open(io.BytesIO(_get(r["url"])[2])).size == (16, 16)


def test_decompression_bomb(served_web, by_fault):
    (r,) = by_fault["bomb"]
    status, headers, body = _get(r["url"])
    side = json.loads((served_web.web_dir / "site.json").read_text())["config"]["bomb_side"]
    assert status == 200 and headers["Content-Type"] == "image/png" and len(body) < 200_000
    assert struct.unpack(">II", body[16:24]) == (side, side) == (r["width"], r["height"])
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))


def test_robots_disallowed_urls_are_served_anyway(by_fault):
    for fault, prefix in (("robots_private", "/private/"), ("robots_agent", "/no-wit/")):
        for r in by_fault[fault]:
            assert r["path"].startswith(prefix)
            assert _get(r["url"])[0] == 200  # robots.txt is the client's to honour


def test_state_files(served_web, truth):
    seeds = served_web.seeds_path.read_text().split()
    assert seeds == [served_web.url(h, "/") for h in range(len(served_web.base_urls))]
    urls = pq.read_table(served_web.urls_path).to_pylist()
    referenced = {r["url"]: r for r in truth if r["kind"] == "image" and r["page"]}
    assert {u["url"] for u in urls} == set(referenced) and len(urls) == len(referenced)
    assert all(u["caption"] == referenced[u["url"]]["caption"] and u["truth_id"] for u in urls)
    served = json.loads((served_web.state_dir / "served.json").read_text())
    assert served["base_urls"] == served_web.base_urls
    assert pq.read_table(served_web.truth_path).column("url").to_pylist() == [r["url"] for r in truth]


def test_keep_alive_head_query_and_404(served_web):
    host, port = urlsplit(served_web.base_urls[0]).hostname, urlsplit(served_web.base_urls[0]).port
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/robots.txt")
        conn.getresponse().read()
        sock = conn.sock
        for path in ("/robots.txt?x=1", "/no/such/thing", "/"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == (404 if path.startswith("/no/") else 200) and int(
                resp.headers["Content-Length"]
            ) == len(body)
        conn.request("HEAD", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"" and int(resp.headers["Content-Length"]) > 100
        assert conn.sock is sock  # every request rode the same connection
    finally:
        conn.close()
    status, headers, _ = _get(served_web.url(0, "/robots.txt"), headers={"Connection": "close"})
    assert status == 200 and headers["Connection"] == "close"


def test_many_connections_at_once(served_web):
    host, port = urlsplit(served_web.base_urls[1]).hostname, urlsplit(served_web.base_urls[1]).port
    socks = [socket.create_connection((host, port), timeout=10) for _ in range(128)]
    try:
        for s in socks:
            s.sendall(b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        for s in socks:
            s.close()


def test_serve_options_and_clean_shutdown(web_dir, tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        serve_web(web_dir, host="0.0.0.0", state_dir=tmp_path)
    with pytest.raises(ValueError, match="ports"):
        serve_web(web_dir, ports=[0], state_dir=tmp_path)
    free = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free.append(s.getsockname()[1])
    with serve_web(web_dir, ports=free, state_dir=tmp_path / "state") as served:
        assert served.base_urls == [f"http://127.0.0.1:{p}/" for p in free]
        assert served.seeds_path == tmp_path / "state" / "seeds.txt"
        kept = http.client.HTTPConnection("127.0.0.1", free[0], timeout=5)
        kept.request("GET", "/robots.txt")
        assert kept.getresponse().read()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", free[0]), timeout=1)
    kept.sock.settimeout(2)
    assert kept.sock.recv(1) == b""  # the kept-alive connection was closed, not left hanging
    kept.close()


def test_a_busy_port_fails_cleanly(web_dir, tmp_path):
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        with pytest.raises(OSError):
            serve_web(web_dir, ports=[free, busy.getsockname()[1], 0], state_dir=tmp_path)
    with socket.socket() as again:
        again.bind(("127.0.0.1", free))  # the port bound before the failure was given back
