"""Serving a generated synthetic web on loopback: one threaded HTTP/1.1 server per host, every response prebuilt."""

import ipaddress
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa

from synthweb.faults import error_page
from synthweb.site import placeholder
from synthweb.truth import SITE_FILE, TRUTH_SCHEMA, load_truth, write_table

SEEDS_FILE = "seeds.txt"
URLS_FILE = "urls.parquet"
SERVED_FILE = "served.json"
URLS_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("truth_id", pa.string(), nullable=False),
    ]
)
TRUTH_URL_SCHEMA = TRUTH_SCHEMA.append(pa.field("url", pa.string())).append(pa.field("target_url", pa.string()))


def _head(status: int, ctype: str | None, length: int, headers: Sequence[Sequence[str]] = ()) -> bytes:
    """Status line and headers without the blank line (the handler adds Connection: close when it must)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Server: synthweb", f"Content-Length: {length}"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class _Route:
    """One URL's answer, built once: the response, and the 429 it gives instead while throttled."""

    __slots__ = ("response", "throttled", "throttle", "delay")

    def __init__(self, status: int, ctype: str | None, body: bytes, headers, delay: float, throttle: int, retry):
        self.response = (_head(status, ctype, len(body), headers), body)
        self.throttle = throttle  # 0: never; n > 0: the first n requests; -1: every request
        self.delay = delay
        busy = error_page(429, "Too Many Requests")
        self.throttled = (_head(429, "text/html; charset=utf-8", len(busy), retry), busy)


_NOT_FOUND_BODY = error_page(404, "Not Found")
_NOT_FOUND = _Route(404, "text/html; charset=utf-8", _NOT_FOUND_BODY, (), 0.0, 0, ())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients hold pooled connections
    disable_nagle_algorithm = True  # headers and body leave at once, no 40 ms delayed-ACK stalls on keep-alive
    timeout = 120  # an idle kept-alive connection gives its thread back after this

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        route = server.routes.get(path, _NOT_FOUND)
        with server.lock:
            n = server.hits[path] = server.hits.get(path, 0) + 1
        if route.delay:
            time.sleep(route.delay)
        head, body = (
            route.throttled if route.throttle and (route.throttle < 0 or n <= route.throttle) else route.response
        )
        end = b"Connection: close\r\n\r\n" if self.close_connection else b"\r\n"
        if not send_body:
            self.wfile.write(head + end)
        elif len(body) <= 256 * 1024:
            self.wfile.write(head + end + body)  # one send for the common case
        else:
            self.wfile.write(head + end)
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server API
        pass  # quiet: tests and benchmarks make thousands of requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # clients open dozens of connections at once
    allow_reuse_address = True

    def __init__(self, address: tuple, routes: dict[str, _Route]):
        self.routes = routes
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks for the host's FQDN, a reverse DNS lookup that can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass  # clients drop connections mid-response (timeouts, size limits): not the server's problem

    def close_all(self, serving: bool) -> None:
        if serving:  # shutdown() waits for serve_forever to notice, so it would hang on a server never started
            self.shutdown()
        self.server_close()
        with self.lock:
            open_connections = list(self.connections)
        for sock in open_connections:  # wake threads blocked on kept-alive connections
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server6(_Server):
    address_family = socket.AF_INET6


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the synthetic web binds loopback addresses only, not {host!r}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ServedWeb:
    """A synthetic web being served: its hosts' base URLs and the serve-time files (seeds, URL list, resolved truth).

    Use as a context manager (or call close()); the servers run on daemon threads.
    """

    def __init__(
        self,
        web_dir: str | Path,
        host: str = "127.0.0.1",
        ports: Sequence[int] | None = None,
        state_dir: str | Path | None = None,
    ):
        self.web_dir = Path(web_dir)
        site_file = self.web_dir / SITE_FILE
        if not site_file.is_file():
            raise FileNotFoundError(f"{self.web_dir} holds no synthetic web ({SITE_FILE} missing)")
        site = json.loads(site_file.read_text())
        n_hosts = site["hosts"]
        host = _loopback(host)
        ports = list(ports) if ports is not None else [0] * n_hosts
        if len(ports) != n_hosts:
            raise ValueError(f"this web has {n_hosts} hosts but {len(ports)} ports were given")
        self.state_dir = Path(state_dir) if state_dir is not None else self.web_dir / "served"
        self.seeds_path = self.state_dir / SEEDS_FILE
        self.urls_path = self.state_dir / URLS_FILE
        self.truth_path = self.state_dir / "truth.parquet"
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        try:
            self._start(site, host, ports)
            self._truth = self._resolve_truth()
            self._write_state(site["seeds"])
        except BaseException:
            self.close()
            raise

    def _start(self, site: dict, host: str, ports: list[int]) -> None:
        """Bind every host's port first (so the placeholders can be filled), then build the routes, then serve."""
        server_class = _Server6 if ":" in host else _Server
        tables: list[dict[str, _Route]] = [{} for _ in ports]
        for port, table in zip(ports, tables, strict=True):
            self._servers.append(server_class((host, port), table))
        name = f"[{host}]" if ":" in host else host
        self.netlocs = [f"{name}:{s.server_address[1]}" for s in self._servers]
        self.base_urls = [f"http://{netloc}/" for netloc in self.netlocs]
        for route in site["routes"]:
            tables[route["host"]][route["path"]] = self._route(route)
        for i, server in enumerate(self._servers):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=f"synthweb-{i}"
            )
            thread.start()
            self._threads.append(thread)

    def _substitute(self, text: str) -> str:
        for i, netloc in enumerate(self.netlocs):
            text = text.replace(placeholder(i), netloc)
        return text

    def _route(self, r: dict) -> _Route:
        body = (self.web_dir / r["file"]).read_bytes() if r["file"] else b""
        headers = [(k, v) for k, v in r["headers"]]
        if r["template"]:
            body = self._substitute(body.decode()).encode()
            headers = [(k, self._substitute(v)) for k, v in headers]
        retry = [(k, v) for k, v in headers if k == "Retry-After"]
        return _Route(r["status"], r["type"], body, headers, r["delay"], r["throttle"], retry)

    def _resolve_truth(self) -> list[dict]:
        rows = load_truth(self.web_dir)
        by_id = {r["id"]: r for r in rows}
        for r in rows:
            r["url"] = self.url(r["host"], r["path"])
        for r in rows:
            r["target_url"] = by_id[r["target"]]["url"] if r["target"] else None
        return rows

    def _write_state(self, seeds: list) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.seeds_path, "".join(self.url(h, p) + "\n" for h, p in seeds).encode())
        urls = [
            {"url": r["url"], "caption": r["caption"], "truth_id": r["id"]}
            for r in self._truth
            if r["kind"] == "image" and r["page"]
        ]
        for rows, schema, path in (
            (urls, URLS_SCHEMA, self.urls_path),
            (self._truth, TRUTH_URL_SCHEMA, self.truth_path),
        ):
            tmp = path.with_name(path.name + ".tmp")
            write_table(rows, schema, tmp)
            os.replace(tmp, path)
        served = {"web_dir": str(self.web_dir), "base_urls": self.base_urls, "seeds": str(self.seeds_path)}
        served |= {"urls": str(self.urls_path), "truth": str(self.truth_path)}
        _write_atomic(self.state_dir / SERVED_FILE, (json.dumps(served, indent=1) + "\n").encode())

    def url(self, host_index: int, path: str) -> str:
        """Absolute URL of `path` on host `host_index`."""
        return self.base_urls[host_index] + path.lstrip("/")

    def truth(self) -> list[dict]:
        """The ground-truth rows with `url` (and, for redirects, `target_url`) filled in for this server's ports."""
        return [dict(r) for r in self._truth]

    def hits(self) -> dict[tuple[int, str], int]:
        """Requests served so far per (host index, path), whatever their outcome."""
        out = {}
        for i, server in enumerate(self._servers):
            with server.lock:
                out.update({(i, path): n for path, n in server.hits.items()})
        return out

    def reset(self) -> None:
        """Forget request counts, so 'first request gets 429' URLs throttle again."""
        for server in self._servers:
            with server.lock:
                server.hits.clear()

    def close(self) -> None:
        """Stop serving: listening sockets closed, kept-alive connections shut, threads joined."""
        if self._closed:
            return
        self._closed = True
        for i, server in enumerate(self._servers):
            server.close_all(serving=i < len(self._threads))
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "ServedWeb":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_web(
    web_dir: str | Path,
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    state_dir: str | Path | None = None,
) -> ServedWeb:
    """Serve the web in `web_dir` on `host` (loopback only), one port per host (free ports unless given), and write
    seeds.txt, urls.parquet, truth.parquet and served.json under `state_dir` (default `<web_dir>/served/`)."""
    return ServedWeb(web_dir, host=host, ports=ports, state_dir=state_dir)
