"""HTML crawl from seed URLs, breadth-first to a depth, as rounds of a Beam pipeline; pages yield candidates."""

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.fetch.http import FetchConfig, Fetcher, fetch_page
from pipeline.rejection import Rejected
from pipeline.sources.html import extract_page, page_candidates
from schemas import fields

CANDIDATES = "candidates"
LINKS = "links"
SOURCE = "crawl"


@dataclass(frozen=True)
class CrawlConfig:
    depth: int = 2  # 0 fetches the seeds only
    allowed_domains: tuple[str, ...] = ()  # empty: the seeds' own hosts; "host:port" pins a port
    threads: int = 32

    def __post_init__(self) -> None:
        if self.depth < 0 or self.threads < 1:
            raise ValueError("depth must be >= 0 and threads >= 1")


def allowed_netlocs(seeds: Iterable[str], cfg: CrawlConfig) -> frozenset[str]:
    return frozenset(d.lower() for d in cfg.allowed_domains) or frozenset(urlsplit(s).netloc.lower() for s in seeds)


def link_allowed(url: str, allowed: frozenset[str]) -> bool:
    """Within an allowed domain: exact host:port for entries with a port, else the host or any subdomain of it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range: such a link cannot be followed
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    netloc, host = parts.netloc.lower(), parts.hostname.lower()
    return any(netloc == d if ":" in d else host == d or host.endswith("." + d) for d in allowed)


def crawl_page(fetcher: Fetcher, url: str, depth: int) -> tuple[dict, list[dict], list[str]]:
    """(page log row, candidates, links) for one page; failures are a log row with the reason, never raised."""
    log = {fields.PAGE_URL: url, fields.DEPTH: depth, fields.STATUS: fields.STATUS_SUCCESS, fields.DETAIL: None}
    try:
        fetched = fetch_page(fetcher, url)
    except Rejected as e:
        return (
            log | {fields.STATUS: e.reason, fields.DETAIL: e.detail or None, fields.IMAGES: 0, fields.LINKS: 0},
            [],
            [],
        )
    page = extract_page(fetched.data, fetched.final_url)
    candidates = page_candidates(page, SOURCE)
    return log | {fields.IMAGES: len(candidates), fields.LINKS: len(page.links)}, candidates, list(page.links)


class _CrawlBatch(beam.DoFn):
    def __init__(self, fetch_cfg: FetchConfig, depth: int, threads: int):
        self.fetch_cfg = fetch_cfg
        self.depth = depth
        self.threads = threads
        self.pages = Metrics.counter("crawl", "pages")

    def setup(self) -> None:
        self.fetcher = Fetcher(self.fetch_cfg, pool_size=self.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads)

    def process(self, urls: list[str]) -> Iterator:
        for log, candidates, links in self.pool.map(lambda u: crawl_page(self.fetcher, u, self.depth), urls):
            self.pages.inc()
            yield log
            for c in candidates:
                yield beam.pvalue.TaggedOutput(CANDIDATES, c)
            for link in links:
                yield beam.pvalue.TaggedOutput(LINKS, link)

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()


def _unseen(kv: tuple[str, dict]) -> bool:
    _, groups = kv
    return bool(list(groups["new"])) and not list(groups["seen"])


class CrawlPages(beam.PTransform):
    """Seeds -> `pages` (PAGE_SCHEMA rows) and `candidates` (CANDIDATE_SCHEMA rows).

    Breadth-first as one round per depth: round d fetches the frontier; its links, kept within the allowed
    domains and minus every page already visited, become round d+1's frontier, so no page is fetched twice.
    """

    def __init__(self, seeds: list[str], cfg: CrawlConfig, fetch_cfg: FetchConfig):
        super().__init__()
        if not seeds:
            raise ValueError("no seed URLs")
        self.seeds = sorted(set(seeds))
        self.cfg = cfg
        self.fetch_cfg = fetch_cfg

    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:  # {"pages", "candidates"}
        allowed = allowed_netlocs(self.seeds, self.cfg)
        frontier = pbegin | "Seeds" >> beam.Create(self.seeds)
        visited, pages, candidates = [], [], []
        for d in range(self.cfg.depth + 1):
            out = (
                frontier
                | f"Spread{d}" >> beam.Reshuffle()
                | f"Batch{d}" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.cfg.threads * 2)
                | f"Crawl{d}"
                >> beam.ParDo(_CrawlBatch(self.fetch_cfg, d, self.cfg.threads)).with_outputs(
                    CANDIDATES, LINKS, main="pages"
                )
            )
            pages.append(out.pages)
            candidates.append(out[CANDIDATES])
            visited.append(frontier)
            if d == self.cfg.depth:
                break
            new = (
                out[LINKS]
                | f"Allowed{d}" >> beam.Filter(link_allowed, allowed)
                | f"KeyNew{d}" >> beam.Map(lambda u: (u, None))
            )
            seen = visited | f"Visited{d}" >> beam.Flatten() | f"KeySeen{d}" >> beam.Map(lambda u: (u, None))
            frontier = (
                {"new": new, "seen": seen}
                | f"Join{d}" >> beam.CoGroupByKey()
                | f"Unseen{d}" >> beam.Filter(_unseen)
                | f"Url{d}" >> beam.Keys()
            )
        return {
            "pages": pages | "AllPages" >> beam.Flatten(),
            "candidates": candidates | "AllCandidates" >> beam.Flatten(),
        }
