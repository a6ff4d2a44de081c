"""`wit fetch` memory does not grow with the number of images: the shard, not the dataset, is what a worker holds."""

import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.shard_reader import load_manifest

# Runs the job in this process (FnApiRunner is in-process), then prints the process's peak RSS in KiB.
_MEASURE = """
import resource, sys
from beam_jobs import fetch
fetch.run(sys.argv[1:])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory):
    """60 noisy photos of 60-200 KB served by a separate process, so its memory is not in what is measured."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = int(rng.integers(300, 600)), int(rng.integers(400, 800))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.jpg", quality=80)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    port = _free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


def _peak_mib(tmp_path, base: str, n: int) -> float:
    urls = [f"{base}/{i % 60}.jpg?n={i}" for i in range(n)]  # distinct URLs, so distinct samples
    lst = tmp_path / f"list-{n}.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(n)]}), lst)
    out = tmp_path / f"out-{n}"
    args = ["--candidates", str(lst), "--out", str(out), "--allow-private", "--samples-per-shard", "500",
            "--threads", "32", "--no-progress"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_manifest(out).rows == n  # every image fetched and written
    peak = next(line for line in done.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return int(peak.split()[1]) / 1024


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_peak_memory_is_flat_from_2000_to_8000_images(tmp_path, photo_server):
    small = _peak_mib(tmp_path, photo_server, 2_000)
    large = _peak_mib(tmp_path, photo_server, 8_000)
    print(f"peak RSS: 2,000 images {small:.0f} MiB, 8,000 images {large:.0f} MiB")
    # 6,000 more images at ~40 KB each once resized (256 px of noise) would be ~240 MiB if the job held them, and
    # more when it shuffled them (before the shard became the unit of work); 6,000 candidate rows are a few MiB.
    assert large - small < 48, (small, large)
