"""The truth's `expected` column is a contract: the project's own fetcher reaches exactly that outcome on every URL."""

import pyarrow.parquet as pq

from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig
from synthweb.faults import OK
from tests.fetching import fetch_all, reason


def test_fetching_every_referenced_url_gives_the_expected_outcome(served_web):
    served_web.reset()  # the 429-once URL must see its first request here
    truth = {r["id"]: r for r in served_web.truth()}
    urls = pq.read_table(served_web.urls_path).to_pylist()
    candidates = [{"key": u["truth_id"], "url": u["url"], "caption": u["caption"]} for u in urls]
    # Loopback needs allow_private; Retry-After of the synthetic web (1 s) is within max_retry_after.
    cfg = FetchConfig(allow_private=True, max_retry_after=3.0)
    results = fetch_all(candidates, cfg, ImageConfig(), threads=32)
    got = {key: OK if reason(r) == "kept" else reason(r) for key, r in results.items()}
    wrong = {k: (truth[k]["fault"], truth[k]["expected"], v) for k, v in got.items() if v != truth[k]["expected"]}
    assert not wrong
    assert sum(v == OK for v in got.values()) > 100 and len(set(got.values())) >= 9
