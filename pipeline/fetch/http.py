"""Fetching one image politely and safely: robots.txt, opt-out headers, private addresses, bounded bodies.

These are the per-request rules; the Beam stage that runs many of them in flight per worker builds on
`fetch_image` and a shared `Fetcher` (connection pool, robots cache) created in a DoFn's setup().
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import urllib3

from pipeline.fetch.politeness import (
    DEFAULT_DISALLOWED_DIRECTIVES,
    USER_AGENT,
    USER_AGENT_TOKEN,
    is_public_address,
    optout_match,
    private_allowed,
    resolve,
    robots_for_status,
    robots_url,
    validate_allowlist,
    x_robots_opt_out,
)
from pipeline.rejection import Rejected
from schemas import reasons

_REDIRECTS = (301, 302, 303, 307, 308)
_ROBOTS_MAX_BYTES = 512 * 1024
_RETRYABLE = (429, 503)


@dataclass(frozen=True)
class FetchConfig:
    user_agent: str = USER_AGENT
    user_agent_token: str = USER_AGENT_TOKEN
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # between two reads from the socket
    deadline: float = 30.0  # for a whole request, body included, whatever the server's pace
    max_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    tries: int = 3  # for 429/503 only; other errors are not retried
    max_retry_after: float = 10.0  # a server asking for longer waits than this is treated as a failure
    max_per_host: int = 16  # requests in flight to one host, whatever the worker's total
    min_host_delay: float = 0.0  # seconds between the starts of two requests to one host
    allow_private: bool = False  # every loopback/private target allowed (the synthetic web needs it)
    private_allowlist: tuple[str, ...] = ()  # or only these: CIDR, IP or IP:PORT
    optout: tuple[str, ...] = ()  # domains (with subdomains) or URL prefixes whose owners asked not to be fetched
    respect_robots: bool = True
    disallowed_directives: frozenset[str] = field(default_factory=lambda: DEFAULT_DISALLOWED_DIRECTIVES)

    def __post_init__(self) -> None:
        if self.tries < 1 or self.max_redirects < 0 or self.max_bytes < 1 or self.max_per_host < 1:
            raise ValueError("tries, max_bytes and max_per_host must be >= 1, max_redirects >= 0")
        validate_allowlist(self.private_allowlist)


@dataclass(frozen=True)
class Fetched:
    data: bytes
    status: int
    content_type: str
    final_url: str


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP date); None if absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Fetcher:
    """A connection pool and a robots.txt cache shared by the threads of one worker.

    robots.txt is fetched once per host (a lock per host keeps concurrent first requests from all fetching it).
    """

    def __init__(self, cfg: FetchConfig, pool_size: int = 64):
        self.cfg = cfg
        self.http = urllib3.PoolManager(
            num_pools=1024,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            headers={"User-Agent": cfg.user_agent},
        )
        self._robots: dict[str, object] = {}
        self._dns: dict[tuple[str, int], list[str] | Rejected] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._last_start: dict[str, float] = {}
        self._guard = threading.Lock()

    def forget_hosts(self, keep_at_most: int) -> bool:
        """Drop every host's cached robots.txt rules, addresses, locks and pacing once more than `keep_at_most` hosts
        are known; True if it did. Only between batches of work, with no request in flight (a dropped slot would let
        a host have more than its share). Web-scale lists name millions of hosts: without this, memory would grow
        with every host a worker ever met; with it, a host seen again after the drop costs one more robots.txt."""
        if max(len(self._robots), len(self._dns), len(self._slots)) <= keep_at_most:
            return False
        with self._guard:
            for cache in (self._robots, self._dns, self._locks, self._slots, self._last_start):
                cache.clear()
        return True

    def addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses, resolved once per Fetcher (a DNS cache); Rejected(dns_error) if it has none."""
        key = (host.lower(), port)
        if key not in self._dns:
            try:
                self._dns[key] = resolve(host, port)
            except (OSError, UnicodeError) as e:
                self._dns[key] = Rejected(reasons.DNS_ERROR, f"cannot resolve {host}: {e}"[:200])
        found = self._dns[key]
        if isinstance(found, Rejected):
            raise Rejected(found.reason, found.detail)
        return found

    def _host_lock(self, host: str, purpose: str) -> threading.Lock:
        # One lock per host and purpose: fetching robots.txt (under the "robots" lock) takes a host slot, which
        # takes the "pace" lock, so the two must differ.
        with self._guard:
            return self._locks.setdefault(f"{purpose}:{host}", threading.Lock())

    @contextmanager
    def host_slot(self, url: str) -> Iterator[None]:
        """Hold one of the host's `max_per_host` slots, starting no sooner than `min_host_delay` after the last."""
        host = urlsplit(url).netloc.lower()
        with self._guard:
            slot = self._slots.setdefault(host, threading.BoundedSemaphore(self.cfg.max_per_host))
        with slot:
            if self.cfg.min_host_delay > 0:
                with self._host_lock(host, "pace"):
                    wait = self._last_start.get(host, 0.0) + self.cfg.min_host_delay - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    self._last_start[host] = time.monotonic()
            yield

    def robots_allows(self, url: str) -> bool:
        """Whether robots.txt lets us fetch `url`; raises Rejected when the host itself cannot be reached, since
        that, not robots.txt, is why the URL cannot be had (RFC 9309 would also have us assume disallow)."""
        host = urlsplit(url).netloc.lower()
        with self._host_lock(host, "robots"):
            if host not in self._robots:
                self._robots[host] = self._fetch_robots(robots_url(url))
        rules = self._robots[host]
        if isinstance(rules, Rejected):
            raise Rejected(rules.reason, rules.detail)
        return rules.can_fetch(self.cfg.user_agent_token, url)

    def open(self, url: str) -> urllib3.BaseHTTPResponse:
        """GET one URL, no redirects, body unread, from the address `addresses` gave (the one check_target judged):
        a name that resolves elsewhere a moment later (DNS rebinding) cannot send us to another host."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = self.addresses(parts.hostname, port)[0]
        tls = (
            {"server_hostname": parts.hostname, "assert_hostname": parts.hostname} if parts.scheme == "https" else None
        )
        pool = self.http.connection_from_host(ip, port, parts.scheme, pool_kwargs=tls)
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": self.cfg.user_agent, "Host": parts.netloc}
        return pool.urlopen(
            "GET", target, headers=headers, redirect=False, retries=False, preload_content=False, assert_same_host=False
        )

    def _fetch_robots(self, url: str):
        """Rules from robots.txt, following up to 5 redirects (RFC 9309), each hop checked like any fetch."""
        try:
            for _ in range(5):
                check_target(self, url)
                resp = self.open(url)  # no host slot: the fetch that needs these rules may be holding one
                try:
                    if resp.status in _REDIRECTS and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    body = resp.read(_ROBOTS_MAX_BYTES)  # RFC 9309: parse at least 500 KiB, ignore the rest
                    return robots_for_status(resp.status, body.decode("utf-8", "replace"))
                finally:
                    resp.close()
                    resp.release_conn()
            return robots_for_status(404)  # a redirect chain past 5 hops counts as unavailable: no rules
        except Rejected as e:
            if e.reason == reasons.DNS_ERROR:
                return e
            return robots_for_status(404)  # robots.txt elsewhere and off limits: as if it did not exist
        except urllib3.exceptions.HTTPError as e:
            return Rejected(exception_reason(e), f"robots.txt: {e}"[:200])

    def close(self) -> None:
        self.http.clear()


def _parsed(url: str) -> tuple[SplitResult, int]:
    """The URL's parts and port; Rejected when it is not http(s), or has no host, a port out of range or brackets
    that do not close (urllib raises ValueError on those, and a page or a redirect may hold any of them)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Rejected(reasons.INVALID_URL, url[:200]) from None
    if parts.scheme not in ("http", "https"):
        raise Rejected(reasons.BLOCKED_SCHEME, url[:200])
    if not parts.hostname:
        raise Rejected(reasons.INVALID_URL, url[:200])
    return parts, port


def check_target(fetcher: "Fetcher", url: str) -> None:
    """Refuse non-http(s) URLs, opted-out domains, and (unless allowed) hosts with any non-public address."""
    cfg = fetcher.cfg
    parts, port = _parsed(url)
    entry = optout_match(url, cfg.optout)
    if entry:
        raise Rejected(reasons.OPTOUT_LIST, entry)
    if cfg.allow_private:
        return
    for ip in fetcher.addresses(parts.hostname, port):
        if not is_public_address(ip) and not private_allowed(ip, port, cfg.private_allowlist):
            raise Rejected(reasons.BLOCKED_ADDRESS, f"{parts.hostname} resolves to {ip}")


def _read_bounded(resp: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> bytes:
    """The body, refused past `max_bytes` (counted, whatever Content-Length claims) or past the deadline.

    read1 returns whatever has arrived, so a server dripping a byte a second meets the deadline check on every
    byte instead of hiding behind a read timeout that each byte resets.
    """
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Rejected(reasons.TOO_LARGE, f"Content-Length {declared}")
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise Rejected(reasons.TIMEOUT, f"body not complete by the deadline ({total} bytes read)")
        chunk = resp.read1(64 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise Rejected(reasons.TOO_LARGE, f"over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _release(resp: urllib3.BaseHTTPResponse, consumed: bool, reading: bool = False) -> None:
    """Give the connection back for reuse only if its body was read; a small unread body is drained, a large one,
    or one that failed mid-read (a dripping or endless server), closes the connection instead."""
    if reading and not consumed:
        resp.close()
    elif not consumed:
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 256 * 1024:
            resp.drain_conn()
        else:
            resp.close()
    resp.release_conn()


def _request(fetcher: Fetcher, url: str) -> tuple[urllib3.BaseHTTPResponse, str]:
    """GET following redirects by hand, so every hop is checked against robots and the address rules."""
    cfg = fetcher.cfg
    seen = set()
    for _ in range(cfg.max_redirects + 1):
        check_target(fetcher, url)
        if cfg.respect_robots and not fetcher.robots_allows(url):
            raise Rejected(reasons.ROBOTS_DISALLOWED, url[:200])
        if url in seen:
            raise Rejected(reasons.TOO_MANY_REDIRECTS, f"loop at {url[:200]}")
        seen.add(url)
        try:
            resp = fetcher.open(url)
        except urllib3.exceptions.HTTPError as e:
            raise Rejected(exception_reason(e), str(e)[:200]) from None
        if resp.status in _REDIRECTS and resp.headers.get("Location"):
            _release(resp, consumed=False)
            try:
                url = urljoin(url, resp.headers["Location"])
            except ValueError:  # the server's Location does not parse: the next hop cannot be made
                raise Rejected(reasons.INVALID_URL, f"redirect to {resp.headers['Location']}"[:200]) from None
            continue
        return resp, url
    raise Rejected(reasons.TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects}")


def _status_reason(status: int) -> str:
    if 400 <= status < 500:
        return reasons.HTTP_4XX
    return reasons.HTTP_5XX if 500 <= status < 600 else reasons.HTTP_OTHER


def exception_reason(e: urllib3.exceptions.HTTPError) -> str:
    """The reason code of an error urllib3 raised connecting, sending or reading a body: timeout, dns_error or
    connect_error (refused, TLS, reset, a broken or malformed response); invalid_url for a host urllib3 refuses.
    Every request path maps through here, so a failure gets the same code whether it met robots.txt, a redirect hop
    or the image itself."""
    if isinstance(e, urllib3.exceptions.MaxRetryError) and isinstance(e.reason, urllib3.exceptions.HTTPError):
        e = e.reason  # our pools never retry, so urllib3 raises the error itself; a pool that retries wraps it
    if isinstance(e, urllib3.exceptions.LocationValueError):  # a host urllib3 cannot use: trying again won't help
        return reasons.INVALID_URL
    # NewConnectionError subclasses ConnectTimeoutError, but says the connection was refused or unreachable.
    if isinstance(e, urllib3.exceptions.TimeoutError) and not isinstance(e, urllib3.exceptions.NewConnectionError):
        return reasons.TIMEOUT
    return _connection_reason(e)


def _connection_reason(e: Exception) -> str:
    """dns_error or connect_error: urllib3 wraps a failed name lookup in a NameResolutionError, sometimes inside
    a MaxRetryError or NewConnectionError."""
    seen: BaseException | None = e
    for _ in range(5):  # a short chain; bounded so a self-referencing one cannot loop
        if seen is None:
            break
        if isinstance(seen, urllib3.exceptions.NameResolutionError):
            return reasons.DNS_ERROR
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else seen.__cause__ or seen.__context__
    return reasons.CONNECT_ERROR


def _is_image_type(ctype: str) -> bool:
    return ctype.startswith("image/") or ctype == "application/octet-stream"


def _is_html_type(ctype: str) -> bool:
    return ctype in ("text/html", "application/xhtml+xml")


def fetch_image(fetcher: Fetcher, url: str, sleep=time.sleep) -> Fetched:
    """Fetch `url` as an image or raise Rejected with a fetch-stage reason code."""
    return fetch_url(fetcher, url, _is_image_type, sleep)


def fetch_page(fetcher: Fetcher, url: str, sleep=time.sleep) -> Fetched:
    """Fetch `url` as an HTML page under the same rules (robots, opt-outs, limits) as images."""
    return fetch_url(fetcher, url, _is_html_type, sleep)


def fetch_url(fetcher: Fetcher, url: str, accept: Callable[[str], bool], sleep=time.sleep) -> Fetched:
    """GET `url` under every politeness and safety rule; `accept` judges the Content-Type (an absent one passes,
    the bytes then decide). Raises Rejected with a fetch-stage reason code.

    Each try holds one of the host's slots from the first byte sent to the last byte read; waiting out a
    Retry-After does not.
    """
    cfg = fetcher.cfg
    _parsed(url)  # before the host slot, which keys on the URL's host
    for attempt in range(1, cfg.tries + 1):
        with fetcher.host_slot(url):
            outcome = _attempt(fetcher, url, accept)
        if isinstance(outcome, Fetched):
            return outcome
        status, wait = outcome
        wait = min(2.0 ** (attempt - 1), cfg.max_retry_after) if wait is None else wait
        if attempt == cfg.tries or wait > cfg.max_retry_after:
            raise Rejected(reasons.RATE_LIMITED, f"HTTP {status} after {attempt} tries")
        sleep(wait)
    raise AssertionError("unreachable: the last try returns or raises")


def _attempt(fetcher: Fetcher, url: str, accept: Callable[[str], bool]) -> Fetched | tuple[int, float | None]:
    """One try: the response, or (status, Retry-After seconds or None) for a 429/503 worth retrying."""
    cfg = fetcher.cfg
    started = time.monotonic()
    resp, final_url = _request(fetcher, url)
    consumed = reading = False
    try:
        if resp.status in _RETRYABLE:
            return resp.status, retry_after_seconds(resp.headers.get("Retry-After"))
        if not 200 <= resp.status < 300:
            raise Rejected(_status_reason(resp.status), str(resp.status))
        opt_out = x_robots_opt_out(
            resp.headers.getlist("X-Robots-Tag"), cfg.user_agent_token, cfg.disallowed_directives
        )
        if opt_out:
            raise Rejected(reasons.OPTOUT_HEADER, opt_out)
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype and not accept(ctype):
            raise Rejected(reasons.NOT_HTML if accept is _is_html_type else reasons.NOT_AN_IMAGE, ctype)
        try:
            reading = True
            data = _read_bounded(resp, cfg.max_bytes, started + cfg.deadline)
            consumed = True
        except urllib3.exceptions.HTTPError as e:
            raise Rejected(exception_reason(e), str(e)[:200]) from None
        return Fetched(data=data, status=resp.status, content_type=ctype, final_url=final_url)
    finally:
        _release(resp, consumed, reading)
