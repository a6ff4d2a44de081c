"""A bucket fetched and written by one worker: key order whatever the completion order, every candidate once."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.fetch.bucket import fetch_bucket
from pipeline.rejection import Rejected
from pipeline.shard_reader import iter_shard
from pipeline.spill import Spool
from pipeline.write_dataset import completed_buckets
from schemas import fields, reasons


def _fetch(seed: int):
    rng = random.Random(seed)
    delays = {f"k{i:03d}": rng.random() * 0.01 for i in range(200)}

    def fetch(candidate: dict):
        key = candidate[fields.KEY]
        time.sleep(delays[key])  # completion order differs from run to run and from key order
        if key.endswith("7"):
            e = Rejected(reasons.HTTP_4XX, "404")
            e.candidate = candidate
            return e
        row = {fields.KEY: key, fields.URL: candidate[fields.URL], fields.IMAGE_FORMAT: "jpg", fields.BYTES: 10}
        return row, f"{key}-image".encode()[:10].ljust(10, b".")

    return fetch


def test_spool_round_trip():
    with Spool() as spool:
        spool.put("a", b"xyz")
        spool.put("b", b"")
        spool.put("c", b"1" * 100_000)
        assert spool.get("c") == b"1" * 100_000 and spool.get("a") == b"xyz" and spool.get("b") == b""


def test_bucket_bytes_do_not_depend_on_completion_order(tmp_path):
    candidates = [{fields.KEY: f"k{i:03d}", fields.URL: f"http://h/{i}"} for i in range(200)]
    earlier = [{fields.KEY: "zz", fields.STAGE: reasons.SOURCE, fields.REASON: reasons.INVALID_URL}]
    results = []
    for run, seed in enumerate((1, 2)):
        order = random.Random(seed).sample(candidates, len(candidates))
        with ThreadPoolExecutor(16) as pool:
            results.append(fetch_bucket(str(tmp_path / f"r{run}"), 3, 5, "fp", order, earlier, _fetch(seed), pool, 8))
    a, b = results
    assert a.shard.tar.sha256 == b.shard.tar.sha256 and a.shard.parquet.sha256 == b.shard.parquet.sha256
    assert a.rejected.sha256 == b.rejected.sha256
    keys = [s.key for s in iter_shard(tmp_path / "r0" / a.shard.tar.path)]
    assert keys == sorted(c[fields.KEY] for c in candidates if not c[fields.KEY].endswith("7"))
    assert a.counts == {reasons.FETCH: {reasons.HTTP_4XX: 20}, reasons.SOURCE: {reasons.INVALID_URL: 1}}
    assert a.shard.name == "00003" and a.shard.rows == 180
    assert completed_buckets(str(tmp_path / "r0"), "fp")[3] == a  # the marker, written last, names the files
    assert not list((tmp_path / "r0").glob("manifest.json"))
