"""`wit fetch --retry-failed`: only transient failures are fetched again, into a new version of the dataset."""

import json
from http.server import SimpleHTTPRequestHandler

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from memfs import clear, files_under
from PIL import Image

from beam_jobs import fetch
from pipeline.fetch.hosts import format_host_summary, host_summary
from pipeline.shard_reader import load_manifest, read_dataset, verify_dataset
from schemas import fields, reasons

FLAKY = {"/3.jpg", "/5.jpg", "/8.jpg"}


class _Flaky(SimpleHTTPRequestHandler):
    """Serves a folder; while `broken`, the FLAKY paths answer 500. Counts every request."""

    broken = True
    hits: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        _Flaky.hits[self.path] = _Flaky.hits.get(self.path, 0) + 1
        if _Flaky.broken and self.path in FLAKY:
            self.send_error(500, "try later")
        else:
            super().do_GET()


@pytest.fixture
def flaky_site(tmp_path, serve_folder):
    root = tmp_path / "site"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    _Flaky.broken, _Flaky.hits = True, {}
    return serve_folder(root, _Flaky)


def test_retry_fetches_only_transient_failures_and_writes_a_new_version(tmp_path, flaky_site, digests):
    urls = [f"{flaky_site}/{i}.jpg" for i in range(12)] + [f"{flaky_site}/gone.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": [f"picture {i}" for i in range(13)]}), tmp_path / "l.parquet")
    common = ["--allow-private", "--threads", "4"]
    fetch.run(["--candidates", str(tmp_path / "l.parquet"), "--out", str(tmp_path / "v1"), "--samples-per-shard", "5"]
              + common)  # fmt: skip
    v1 = load_manifest(tmp_path / "v1")
    assert v1.rows == 9 and v1.counts["fetch"] == {reasons.HTTP_5XX: 3, reasons.HTTP_4XX: 1}
    before = digests(tmp_path / "v1")

    _Flaky.broken, _Flaky.hits = False, {}
    fetch.run(["--retry-failed", str(tmp_path / "v1"), "--out", str(tmp_path / "v2")] + common)

    assert {p for p in _Flaky.hits if p != "/robots.txt"} == FLAKY  # the 404 and the successes are not refetched
    assert digests(tmp_path / "v1") == before  # the earlier version is left as it was
    assert verify_dataset(tmp_path / "v2") == []
    v2 = load_manifest(tmp_path / "v2")
    assert v2.rows == 12 and v2.counts["fetch"] == {reasons.HTTP_4XX: 1}
    assert sum(v2.counts["shards"].values()) + 1 == 13  # every candidate of v1 still accounted for
    assert {s.name for s in v1.shards} < {s.name for s in v2.shards}  # carried under their names, new ones after
    for old in v1.shards:
        assert old in v2.shards
    assert sorted(s.caption for s in read_dataset(tmp_path / "v2")) == sorted(f"picture {i}" for i in range(12))
    assert v2.config["retry_of"]["dataset"] == str((tmp_path / "v1").resolve())
    assert v2.config["image"] == v1.config["image"] and v2.config["samples_per_shard"] == 5
    rejected = pq.read_table([str(tmp_path / "v2" / f.path) for f in v2.rejected]).to_pylist()
    assert [r[fields.URL] for r in rejected] == [f"{flaky_site}/gone.jpg"]

    # Retrying a version with nothing transient left fetches nothing and keeps everything.
    _Flaky.hits = {}
    fetch.run(["--retry-failed", str(tmp_path / "v2"), "--out", str(tmp_path / "v3")] + common)
    assert {p for p in _Flaky.hits if p != "/robots.txt"} == set()
    assert load_manifest(tmp_path / "v3").rows == 12 and verify_dataset(tmp_path / "v3") == []

    summary = host_summary(tmp_path / "v1")
    assert len(summary) == 1 and summary[0].kept == 9
    assert dict(summary[0].reasons) == {reasons.HTTP_5XX: 3, reasons.HTTP_4XX: 1}
    assert "http_5xx 3" in format_host_summary(summary)


def test_fetch_and_retry_on_another_filesystem(tmp_path, flaky_site):
    """Both versions on memfs:// (a non-local Beam FileSystem, in this process): written, resumed from, carried."""
    urls = [f"{flaky_site}/{i}.jpg" for i in range(12)] + [f"{flaky_site}/gone.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": [f"picture {i}" for i in range(13)]}), tmp_path / "l.parquet")
    common = ["--allow-private", "--threads", "4"]
    v1, v2 = "memfs://retry/v1", "memfs://retry/v2"
    try:
        fetch.run(["--candidates", str(tmp_path / "l.parquet"), "--out", v1, "--samples-per-shard", "5"] + common)
        assert load_manifest(v1).rows == 9 and verify_dataset(v1) == []
        before = files_under(v1)
        _Flaky.broken = False
        fetch.run(["--retry-failed", v1, "--out", v2] + common)
        assert files_under(v1) == before and verify_dataset(v2) == []
        manifest = load_manifest(v2)
        assert manifest.rows == 12 and manifest.config["retry_of"]["dataset"] == v1
        assert all(
            files_under(v2)[f.path] == before[f.path] for s in load_manifest(v1).shards for f in (s.tar, s.parquet)
        )
        assert host_summary(v2)[0].kept == 12
    finally:
        clear("memfs://retry")


def test_retry_refuses_bad_arguments(tmp_path, flaky_site):
    with pytest.raises(SystemExit):
        fetch.run(["--out", str(tmp_path / "x")])  # neither source
    with pytest.raises(SystemExit):
        fetch.run(["--retry-failed", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])  # not a dataset
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(SystemExit):
        fetch.run(["--retry-failed", str(tmp_path / "d"), "--out", str(tmp_path / "d")])  # in place
