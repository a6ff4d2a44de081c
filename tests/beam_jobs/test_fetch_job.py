"""`wit fetch` as a Beam job: every candidate accounted for, a verifiable dataset, identical on rerun."""

import functools
import hashlib
import io
import os
import signal
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dask_cluster import DaskCluster
from PIL import Image

from beam_jobs import fetch
from pipeline.shard_reader import read_dataset, verify_dataset
from schemas import DatasetManifest, fields, reasons


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _write_site(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (100 + 7 * i, 180, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (root / "private").mkdir(exist_ok=True)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def image_site(tmp_path_factory):
    root = _write_site(tmp_path_factory.mktemp("site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_fetch_job_writes_a_verifiable_reproducible_dataset(tmp_path, image_site, worker_pool):
    urls = [f"{image_site}/{i}.jpg" for i in range(30)]
    urls += [f"{image_site}/missing.jpg", f"{image_site}/private/a.jpg", f"{image_site}/notes.txt", "not a url", ""]
    pq.write_table(
        pa.table({"URL": urls, "TEXT": [f"picture number {i}" for i in range(len(urls))]}), tmp_path / "l.parquet"
    )
    args = [
        "--candidates",
        str(tmp_path / "l.parquet"),
        "--allow-private",
        "--samples-per-shard",
        "8",
        "--threads",
        "8",
    ]
    fetch.run([*args, "--out", str(tmp_path / "a")])
    fetch.run([*args, "--out", str(tmp_path / "b"), *worker_pool.options])  # portable, SDK workers in a pool

    assert verify_dataset(tmp_path / "a") == []
    manifest = DatasetManifest.from_json((tmp_path / "a" / "manifest.json").read_text())
    assert manifest.rows == 30 and len(manifest.shards) == 5  # ceil(35 candidates / 8) buckets
    assert manifest.counts == {
        "fetch": {reasons.HTTP_4XX: 1, reasons.ROBOTS_DISALLOWED: 1, reasons.NOT_AN_IMAGE: 1},
        "source": {reasons.INVALID_URL: 1, reasons.MALFORMED_ROW: 1},
        "shards": {"kept": 30},
    }
    samples = list(read_dataset(tmp_path / "a"))
    assert sorted(s.caption for s in samples) == sorted(f"picture number {i}" for i in range(30))
    by_caption = {s.caption: s for s in samples}
    s7 = by_caption["picture number 7"]
    assert (s7.row[fields.ORIGINAL_WIDTH], s7.row[fields.ORIGINAL_HEIGHT]) == (180, 149)
    assert Image.open(io.BytesIO(s7.image)).size == (180, 149)  # smaller than 256: not upscaled
    rejected = pq.read_table([str(tmp_path / "a" / f.path) for f in manifest.rejected]).to_pylist()
    assert len(rejected) == 5 and {r[fields.URL] for r in rejected} >= {f"{image_site}/missing.jpg", "not a url"}
    # Another runner, another run: the same bytes.
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_fetch_job_on_a_dask_cluster_gives_the_same_bytes(tmp_path, image_site, dask_cluster):
    urls = [f"{image_site}/{i}.jpg" for i in range(30)] + [f"{image_site}/missing.jpg", "not a url"]
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"picture {i}" for i in range(len(urls))]}), tmp_path / "l.parquet")
    args = ["--candidates", str(tmp_path / "l.parquet"), "--allow-private", "--samples-per-shard", "4"]
    fetch.run([*args, "--out", str(tmp_path / "a")])
    fetch.run(
        [*args, "--out", str(tmp_path / "b"), "--runner=DaskRunner", f"--dask_client_address={dask_cluster.address}"]
    )
    assert verify_dataset(tmp_path / "b") == []
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def _job_args(candidates: Path, threads: int) -> list[str]:
    return ["--candidates", str(candidates), "--allow-private", "--samples-per-shard", "10", "--threads", str(threads)]


class _Counting(_Quiet):
    hits: dict = {}

    def do_GET(self):  # noqa: N802
        _Counting.hits[self.path] = _Counting.hits.get(self.path, 0) + 1
        super().do_GET()


def test_rerun_after_an_interruption_fetches_only_what_is_missing_and_ends_identical(tmp_path, image_site):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(site_dir / f"{i}.jpg")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Counting, directory=str(site_dir)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{i}.jpg" for i in range(40)] + [f"{base}/gone-{i}.jpg" for i in range(4)]
    pq.write_table(pa.table({"url": urls, "caption": [f"c {i}" for i in range(44)]}), tmp_path / "l.parquet")
    args = _job_args(tmp_path / "l.parquet", threads=4)
    try:
        fetch.run([*args, "--out", str(tmp_path / "whole")])
        fetch.run([*args, "--out", str(tmp_path / "resumed")])
        # An interruption: the manifest never written, two buckets lost (files, and the marker of one).
        resumed = tmp_path / "resumed"
        (resumed / "manifest.json").unlink()
        for name in ("00001.tar", "00001.parquet", ".bucket-00001.json", ".bucket-00003.json"):
            (resumed / "shards" / name).unlink()
        _Counting.hits.clear()
        fetch.run([*args, "--out", str(resumed)])
    finally:
        server.shutdown()
        server.server_close()
    refetched = sum(n for path, n in _Counting.hits.items() if path != "/robots.txt")
    lost = [
        tmp_path / "whole" / rel
        for i in (1, 3)
        for rel in (f"shards/{i:05d}.parquet", f"rejected/part-{i:05d}.parquet")
    ]
    assert refetched == sum(pq.read_metadata(p).num_rows for p in lost if p.exists())  # the two lost buckets, no more
    assert verify_dataset(resumed) == []
    assert _digests(resumed) == _digests(tmp_path / "whole")


def test_a_killed_fetch_job_rerun_gives_the_same_dataset(tmp_path, image_site):
    import subprocess
    import sys

    urls = [f"{image_site}/{i % 30}.jpg?v={i}" for i in range(120)]
    pq.write_table(pa.table({"url": urls, "caption": [f"c {i}" for i in range(120)]}), tmp_path / "l.parquet")
    args = _job_args(tmp_path / "l.parquet", threads=2)
    fetch.run([*args, "--out", str(tmp_path / "whole")])
    code = "import sys; from beam_jobs import fetch; fetch.run(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(tmp_path / "killed")])
    deadline = time.monotonic() + 60
    while not list((tmp_path / "killed" / "shards").glob(".bucket-*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    fetch.run([*args, "--out", str(tmp_path / "killed")])
    assert verify_dataset(tmp_path / "killed") == []
    final = {k: v for k, v in _digests(tmp_path / "killed").items() if ".tmp" not in k}
    assert final == _digests(tmp_path / "whole")


class _Slow(_Quiet):
    def do_GET(self):  # noqa: N802
        time.sleep(0.1)  # each bucket takes a while, so that a worker dies in the middle of the job
        super().do_GET()


def test_a_dask_worker_killed_mid_fetch_costs_a_retry_not_the_dataset(tmp_path, serve_folder, digests):
    """SIGKILL one of two workers while buckets are in flight: its nanny starts a new one, the scheduler reruns what
    was lost, and the dataset is byte for byte the default runner's (a bucket is written whole or not at all)."""
    site = serve_folder(_write_site(tmp_path / "site"), _Slow)
    urls = [f"{site}/{i % 30}.jpg?v={i}" for i in range(96)]
    pq.write_table(pa.table({"url": urls, "caption": [f"c {i}" for i in range(96)]}), tmp_path / "l.parquet")
    args = [*_job_args(tmp_path / "l.parquet", threads=2), "--samples-per-shard", "4"]  # 24 buckets
    fetch.run([*args, "--out", str(tmp_path / "whole")])
    out = tmp_path / "killed"
    cluster = DaskCluster(workers=2, folder=tmp_path)
    try:
        errors: list[BaseException] = []

        def job() -> None:
            try:
                fetch.run([*args, "--out", str(out), "--runner=DaskRunner", f"--dask_client_address={cluster.address}"])
            except BaseException as e:  # noqa: BLE001 - re-raised by the test below
                errors.append(e)

        thread = threading.Thread(target=job)
        thread.start()
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob(".bucket-*.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        done_at_kill = len(list((out / "shards").glob(".bucket-*.json")))
        victim = cluster.worker_pids()["w0"]
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and errors == []
        assert 0 < done_at_kill < 24  # killed mid-job: most buckets were still to come
        assert cluster.worker_pids().get("w0") not in (None, victim)  # a new process took the name
    finally:
        cluster.close()
    assert verify_dataset(out) == []
    assert digests(out) == digests(tmp_path / "whole")
