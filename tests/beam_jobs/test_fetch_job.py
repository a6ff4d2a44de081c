"""`wit fetch` as a Beam job: every candidate accounted for, a verifiable dataset, identical on rerun."""

import functools
import hashlib
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_jobs import fetch
from pipeline.shard_reader import read_dataset, verify_dataset
from schemas import DatasetManifest, fields, reasons


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (100 + 7 * i, 180, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (root / "private").mkdir()
    (root / "notes.txt").write_text("not an image")
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


def test_fetch_job_writes_a_verifiable_reproducible_dataset(tmp_path, image_site):
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
    fetch.run(
        [
            *args,
            "--out",
            str(tmp_path / "b"),
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=LOOPBACK",
        ]
    )

    assert verify_dataset(tmp_path / "a") == []
    manifest = DatasetManifest.from_json((tmp_path / "a" / "manifest.json").read_text())
    assert manifest.rows == 30 and len(manifest.shards) == 4
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
    rejected = pq.read_table(tmp_path / "a" / manifest.rejected[0].path).to_pylist()
    assert len(rejected) == 5 and {r[fields.URL] for r in rejected} >= {f"{image_site}/missing.jpg", "not a url"}
    # Another runner, another run: the same bytes.
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
