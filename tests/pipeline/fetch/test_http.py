"""The per-request fetch rules over real HTTP on loopback: robots, opt-outs, retries, redirects, limits."""

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.exceptions as ux
from PIL import Image

from pipeline.fetch.http import FetchConfig, Fetcher, exception_reason, fetch_image, retry_after_seconds
from pipeline.fetch.image import ImageConfig
from pipeline.rejection import Rejected
from schemas import fields, reasons
from tests.fetching import fetch_all, reason


def _jpeg(w: int = 120, h: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: dict = {}
    lock = threading.Lock()
    in_flight = 0
    max_in_flight = 0
    starts: list = []

    def _slow(self):
        with self.lock:
            _Handler.in_flight += 1
            _Handler.max_in_flight = max(_Handler.max_in_flight, _Handler.in_flight)
            _Handler.starts.append(time.monotonic())
        time.sleep(0.15)
        with self.lock:
            _Handler.in_flight -= 1
        self._send(200, JPEG)

    def log_message(self, *args):  # keep test output clean
        pass

    def _slow_body(self):
        with self.lock:
            _Handler.in_flight += 1
            _Handler.max_in_flight = max(_Handler.max_in_flight, _Handler.in_flight)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.15)  # headers sent at once, the body only later: the request is still in flight
        self.wfile.write(JPEG)
        with self.lock:
            _Handler.in_flight -= 1

    def _drip(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        try:
            for i in range(len(JPEG)):  # one byte every 50 ms: each read is quick, the whole is not
                self.wfile.write(JPEG[i : i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stall(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.5)  # headers at once, then silence: the body read times out
        try:
            self.wfile.write(JPEG)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _truncated(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG[:100])  # less than promised, then the connection closes
        self.close_connection = True

    def _endless(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")  # no Content-Length: it never says how long
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(10_000):
                self.wfile.write(b"\xff" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            for value in v if isinstance(v, list) else [v]:
                self.send_header(k, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - the http.server API
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
            n = self.hits[self.path]
        routes = {
            "/robots.txt": lambda: self._send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain"),
            "/ok.jpg": lambda: self._send(200, JPEG),
            "/private/a.jpg": lambda: self._send(200, JPEG),
            "/missing.jpg": lambda: self._send(404, b"nope", "text/html"),
            "/error.jpg": lambda: self._send(500, b"oops", "text/html"),
            "/flaky.jpg": lambda: (
                self._send(429, b"", headers={"Retry-After": "0"}) if n == 1 else self._send(200, JPEG)
            ),
            "/always429.jpg": lambda: self._send(429, b"", headers={"Retry-After": "0"}),
            "/patient.jpg": lambda: self._send(503, b"", headers={"Retry-After": "3600"}),
            "/noai.jpg": lambda: self._send(200, JPEG, headers={"X-Robots-Tag": "noai"}),
            "/otherbot.jpg": lambda: self._send(200, JPEG, headers={"X-Robots-Tag": ["otherbot: noai", "nofollow"]}),
            "/page.jpg": lambda: self._send(200, b"<html></html>", "text/html"),
            "/big.jpg": lambda: self._send(200, b"\xff" * 5000),
            "/redirect.jpg": lambda: self._send(302, b"", headers={"Location": "/ok.jpg"}),
            "/to-private.jpg": lambda: self._send(301, b"", headers={"Location": "/private/a.jpg"}),
            "/loop-a.jpg": lambda: self._send(302, b"", headers={"Location": "/loop-b.jpg"}),
            "/to-bad-brackets.jpg": lambda: self._send(302, b"", headers={"Location": "http://[::1/x.jpg"}),
            "/to-bad-port.jpg": lambda: self._send(302, b"", headers={"Location": "http://127.0.0.1:99999/x.jpg"}),
            "/loop-b.jpg": lambda: self._send(302, b"", headers={"Location": "/loop-a.jpg"}),
            "/corrupt.jpg": lambda: self._send(200, JPEG[:40]),
            "/slow.jpg": self._slow,
            "/drip.jpg": self._drip,
            "/slow-body.jpg": self._slow_body,
            "/endless.jpg": self._endless,
            "/stall.jpg": self._stall,
            "/truncated.jpg": self._truncated,
        }
        routes.get(self.path.split("?")[0], lambda: self._send(404, b"", "text/html"))()


@pytest.fixture(scope="module")
def base_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fetcher():
    f = Fetcher(FetchConfig(allow_private=True, max_bytes=4096, read_timeout=5))
    yield f
    f.close()


def _reason(fetcher, url) -> str:
    with pytest.raises(Rejected) as e:
        fetch_image(fetcher, url, sleep=lambda s: None)
    return e.value.reason


def test_ok_and_redirect(fetcher, base_url):
    got = fetch_image(fetcher, f"{base_url}/ok.jpg")
    assert got.data == JPEG and got.status == 200 and got.content_type == "image/jpeg"
    got = fetch_image(fetcher, f"{base_url}/redirect.jpg")
    assert got.data == JPEG and got.final_url.endswith("/ok.jpg")


def test_robots_checked_on_every_hop(fetcher, base_url):
    robots_before = _Handler.hits.get("/robots.txt", 0)
    assert _reason(fetcher, f"{base_url}/private/a.jpg") == reasons.ROBOTS_DISALLOWED
    assert _reason(fetcher, f"{base_url}/to-private.jpg") == reasons.ROBOTS_DISALLOWED
    assert _Handler.hits.get("/private/a.jpg") is None  # never requested
    assert _Handler.hits["/robots.txt"] == robots_before + 1  # fetched once per host and fetcher


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.jpg", reasons.HTTP_4XX),
        ("/error.jpg", reasons.HTTP_5XX),
        ("/noai.jpg", reasons.OPTOUT_HEADER),
        ("/page.jpg", reasons.NOT_AN_IMAGE),
        ("/big.jpg", reasons.TOO_LARGE),
        ("/loop-a.jpg", reasons.TOO_MANY_REDIRECTS),
        ("/to-bad-brackets.jpg", reasons.INVALID_URL),
        ("/to-bad-port.jpg", reasons.INVALID_URL),
        ("/always429.jpg", reasons.RATE_LIMITED),
        ("/patient.jpg", reasons.RATE_LIMITED),
    ],
)
def test_fetch_rejections(fetcher, base_url, path, reason):
    assert _reason(fetcher, base_url + path) == reason


@pytest.mark.parametrize(
    "url", ["http://[::1/x.jpg", "http://127.0.0.1:99999/x.jpg", "http://:80/x.jpg", "http:///x.jpg", "http://"]
)
def test_urls_that_do_not_parse_are_rejected_not_raised(fetcher, url):
    assert _reason(fetcher, url) == reasons.INVALID_URL


def test_opt_out_scoped_to_another_agent_is_fetched(fetcher, base_url):
    assert fetch_image(fetcher, f"{base_url}/otherbot.jpg").data == JPEG


def test_retry_after_then_success(fetcher, base_url):
    waits = []
    got = fetch_image(fetcher, f"{base_url}/flaky.jpg", sleep=waits.append)
    assert got.data == JPEG and waits == [0.0]


def test_always_429_tries_are_bounded(fetcher, base_url):
    before = _Handler.hits.get("/always429.jpg", 0)
    _reason(fetcher, f"{base_url}/always429.jpg")
    assert _Handler.hits["/always429.jpg"] - before == fetcher.cfg.tries


def test_private_addresses_refused_by_default(base_url):
    f = Fetcher(FetchConfig())
    with pytest.raises(Rejected) as e:
        fetch_image(f, f"{base_url}/ok.jpg")
    assert e.value.reason == reasons.BLOCKED_ADDRESS
    assert _reason(f, "ftp://example.com/x.jpg") == reasons.BLOCKED_SCHEME


def test_retry_after_parsing():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0


def test_fetching_accounts_for_every_candidate(base_url):
    paths = ["/ok.jpg", "/missing.jpg", "/corrupt.jpg", "/noai.jpg", "/redirect.jpg"] * 6
    cands = [{fields.KEY: f"k{i}", fields.URL: base_url + p, fields.CAPTION: f"c{i}"} for i, p in enumerate(paths)]
    out = fetch_all(cands, FetchConfig(allow_private=True), ImageConfig(min_side=16), threads=4)
    kinds = [reason(out[c[fields.KEY]]) for c in cands]
    assert kinds == ["kept", reasons.HTTP_4XX, reasons.DECODE_ERROR, reasons.OPTOUT_HEADER, "kept"] * 6
    row, image = out["k0"]
    assert row[fields.KEY] == "k0" and row[fields.WIDTH] == 120 and row[fields.STATUS] == fields.STATUS_SUCCESS
    assert Image.open(io.BytesIO(image)).size == (120, 90)
    assert out["k1"][fields.URL] == base_url + "/missing.jpg" and out["k1"][fields.CAPTION] == "c1"


def test_per_host_concurrency_cap_and_delay(base_url):
    cands = [{fields.KEY: f"s{i}", fields.URL: f"{base_url}/slow.jpg"} for i in range(9)]
    _Handler.max_in_flight = 0
    cfg = FetchConfig(allow_private=True, max_per_host=3)
    out = fetch_all(cands, cfg, ImageConfig(min_side=16), threads=9)
    assert all(reason(o) == "kept" for o in out.values())
    assert _Handler.max_in_flight == 3

    _Handler.starts.clear()
    cfg = FetchConfig(allow_private=True, min_host_delay=0.1)
    fetch_all(cands[:4], cfg, ImageConfig(min_side=16), threads=4)
    gaps = [b - a for a, b in zip(_Handler.starts, _Handler.starts[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.09


def _fetch_stage(tmp_path, cands: list[dict], buckets: int, **kwargs) -> tuple[dict, dict]:
    """FetchBuckets + FinalizeDataset on FnApiRunner: the samples {key: width} and rejections {key: reason}."""
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.fetch.stage import BucketJob, FetchBuckets
    from pipeline.shard_reader import read_dataset
    from pipeline.write_dataset import FinalizeDataset

    root = str(tmp_path / "ds")
    job = BucketJob(root, buckets, "fp", str(tmp_path / "work"))
    with TestPipeline(runner="FnApiRunner") as p:
        inputs = {"candidates": p | "C" >> beam.Create(cands), "rejected": p | "R" >> beam.Create([])}
        written = inputs | FetchBuckets(job, FetchConfig(allow_private=True), ImageConfig(min_side=16), **kwargs)
        _ = written | FinalizeDataset(root, {"job": "test"}, buckets)
    samples = {s.key: s.row[fields.WIDTH] for s in read_dataset(root)}
    rejected = {r[fields.KEY]: r[fields.REASON] for r in pq.read_table(tmp_path / "ds" / "rejected").to_pylist()}
    return samples, rejected


def test_fetch_buckets_beam_stage(base_url, tmp_path):
    paths = ["/ok.jpg", "/missing.jpg", "/private/a.jpg", "/redirect.jpg", "/corrupt.jpg"]
    cands = [{fields.KEY: f"k{i}", fields.URL: base_url + p, fields.CAPTION: p} for i, p in enumerate(paths)]
    samples, rejected = _fetch_stage(tmp_path, cands, buckets=3, threads=4)
    assert samples == {"k0": 120, "k3": 120}
    assert rejected == {"k1": reasons.HTTP_4XX, "k2": reasons.ROBOTS_DISALLOWED, "k4": reasons.DECODE_ERROR}


def test_deadline_cuts_off_a_dripping_server(base_url):
    f = Fetcher(FetchConfig(allow_private=True, read_timeout=5, deadline=0.5))
    t0 = time.monotonic()
    with pytest.raises(Rejected) as e:
        fetch_image(f, f"{base_url}/drip.jpg")
    assert e.value.reason == reasons.TIMEOUT
    assert time.monotonic() - t0 < 1.5


def test_body_cap_holds_without_content_length(base_url):
    f = Fetcher(FetchConfig(allow_private=True, max_bytes=1_000_000))
    with pytest.raises(Rejected) as e:
        fetch_image(f, f"{base_url}/endless.jpg")
    assert e.value.reason == reasons.TOO_LARGE


def test_connection_failures_have_their_own_reasons(base_url):
    import socket

    f = Fetcher(FetchConfig(allow_private=True, connect_timeout=2))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert _reason(f, f"http://127.0.0.1:{closed_port}/x.jpg") == reasons.CONNECT_ERROR
    assert _reason(f, "http://no-such-host.invalid/x.jpg") == reasons.DNS_ERROR
    assert _reason(Fetcher(FetchConfig()), "http://no-such-host.invalid/x.jpg") == reasons.DNS_ERROR
    assert _reason(f, "file:///etc/passwd") == reasons.BLOCKED_SCHEME


_GAI = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ux.ConnectTimeoutError("connect timed out"), reasons.TIMEOUT),
        (ux.ReadTimeoutError(None, "/x.jpg", "Read timed out."), reasons.TIMEOUT),
        (ux.NewConnectionError(None, "Connection refused"), reasons.CONNECT_ERROR),  # a ConnectTimeoutError subclass
        (ux.NameResolutionError("no-such-host.invalid", None, _GAI), reasons.DNS_ERROR),
        (ux.SSLError("certificate verify failed"), reasons.CONNECT_ERROR),
        (ux.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")), reasons.CONNECT_ERROR),
        (ux.ProtocolError("Connection broken", ux.IncompleteRead(100, 900)), reasons.CONNECT_ERROR),
        (ux.ProxyError("Unable to connect to proxy", OSError("unreachable")), reasons.CONNECT_ERROR),
        (ux.MaxRetryError(None, "/x.jpg", ux.ReadTimeoutError(None, "/x.jpg", "Read timed out.")), reasons.TIMEOUT),
        (ux.MaxRetryError(None, "/x.jpg", ux.NameResolutionError("h.invalid", None, _GAI)), reasons.DNS_ERROR),
        (ux.MaxRetryError(None, "/x.jpg", ux.NewConnectionError(None, "refused")), reasons.CONNECT_ERROR),
        (ux.LocationValueError("No host specified."), reasons.INVALID_URL),  # not transient: no retry
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_each_urllib3_error_has_its_reason(error, reason):
    assert exception_reason(error) == reason


def test_a_failed_name_lookup_is_found_down_the_chain():
    try:
        raise ux.ProtocolError("Connection aborted.") from ux.NameResolutionError("h.invalid", None, _GAI)
    except ux.ProtocolError as e:
        assert exception_reason(e) == reasons.DNS_ERROR


def test_body_read_failures_keep_their_own_reasons(base_url):
    f = Fetcher(FetchConfig(allow_private=True, read_timeout=0.2))
    assert _reason(f, f"{base_url}/stall.jpg") == reasons.TIMEOUT
    assert _reason(f, f"{base_url}/truncated.jpg") == reasons.CONNECT_ERROR
    f.close()


def test_allowlist_and_optout_list(base_url):
    port = int(base_url.rsplit(":", 1)[1])
    assert (
        fetch_image(Fetcher(FetchConfig(private_allowlist=(f"127.0.0.1:{port}",))), f"{base_url}/ok.jpg").data == JPEG
    )
    assert _reason(Fetcher(FetchConfig(private_allowlist=(f"127.0.0.1:{port + 1}",))), f"{base_url}/ok.jpg") == (
        reasons.BLOCKED_ADDRESS
    )
    f = Fetcher(FetchConfig(allow_private=True, optout=("127.0.0.1",)))
    assert _reason(f, f"{base_url}/ok.jpg") == reasons.OPTOUT_LIST


def test_server_errors_and_odd_ip_spellings(base_url):
    port = base_url.rsplit(":", 1)[1]
    strict = Fetcher(FetchConfig())
    for host in ("2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]", "localhost"):
        assert _reason(strict, f"http://{host}:{port}/ok.jpg") == reasons.BLOCKED_ADDRESS, host


def test_per_host_cap_covers_the_body_download(base_url):
    cands = [{fields.KEY: f"b{i}", fields.URL: f"{base_url}/slow-body.jpg?{i}"} for i in range(8)]
    _Handler.max_in_flight = 0
    out = fetch_all(cands, FetchConfig(allow_private=True, max_per_host=2), ImageConfig(min_side=16), 8)
    assert all(reason(o) == "kept" for o in out.values())
    assert _Handler.max_in_flight == 2


def test_connects_to_the_address_that_was_checked(base_url):
    """DNS pinning: the connection goes to the address resolved (and judged) once, never to a fresh lookup."""
    port = int(base_url.rsplit(":", 1)[1])
    f = Fetcher(FetchConfig(allow_private=True))
    f._dns[("pinned.invalid", port)] = ["127.0.0.1"]  # as if resolved and checked a moment ago
    assert fetch_image(f, f"http://pinned.invalid:{port}/ok.jpg").data == JPEG  # .invalid never resolves in DNS


def test_fetch_stage_with_image_worker_processes(base_url, tmp_path):
    paths = ["/ok.jpg", "/corrupt.jpg", "/ok.jpg?2"]
    cands = [{fields.KEY: f"k{i}", fields.URL: base_url + p} for i, p in enumerate(paths)]
    samples, rejected = _fetch_stage(tmp_path, cands, buckets=1, threads=2, image_workers=1)
    assert samples == {"k0": 120, "k2": 120}
    # A Rejected raised in a worker process comes back with its code intact.
    assert rejected == {"k1": reasons.DECODE_ERROR}


def test_forgetting_hosts_bounds_the_caches_and_fetching_goes_on(base_url):
    f = Fetcher(FetchConfig(allow_private=True))
    assert fetch_image(f, f"{base_url}/ok.jpg").data == JPEG
    assert not f.forget_hosts(keep_at_most=1)  # one host known: kept
    assert f.forget_hosts(keep_at_most=0)
    assert not f._robots and not f._dns and not f._slots
    assert fetch_image(f, f"{base_url}/ok.jpg").data == JPEG  # robots.txt and the address fetched again
    assert _reason(f, f"{base_url}/private/a.jpg") == reasons.ROBOTS_DISALLOWED  # and still obeyed
