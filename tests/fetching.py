"""Fetching candidates the way a fetch worker does (pipeline.fetch.bucket.fetch_into), for tests of fetch rules."""

import functools
from concurrent.futures import ThreadPoolExecutor

from pipeline.fetch.bucket import Spool, fetch_into
from pipeline.fetch.http import FetchConfig, Fetcher
from pipeline.fetch.image import ImageConfig
from pipeline.fetch.sample import fetch_or_reject
from schemas import fields


def fetch_all(candidates: list[dict], cfg: FetchConfig, image_cfg: ImageConfig, threads: int = 4) -> dict:
    """{key: (sample row, image bytes) or the rejection row}: one outcome for each candidate (asserted)."""
    fetcher = Fetcher(cfg, pool_size=threads)
    fetch = functools.partial(fetch_or_reject, fetcher, image_cfg=image_cfg)
    try:
        with ThreadPoolExecutor(threads) as pool, Spool() as spool:
            rows, rejected = fetch_into(candidates, fetch, pool, spool, in_flight=threads * 3)
            outcomes = {r[fields.KEY]: (r, spool.get(r[fields.KEY])) for r in rows}
    finally:
        fetcher.close()
    outcomes |= {r[fields.KEY]: r for r in rejected}
    assert len(rows) + len(rejected) == len(outcomes) == len(candidates)
    return outcomes


def reason(outcome) -> str:
    """ "kept" for a sample, else the rejection's reason code."""
    return "kept" if isinstance(outcome, tuple) else outcome[fields.REASON]
