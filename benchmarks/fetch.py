"""`wit fetch` vs img2dataset: same URL list, same loopback server, same output settings, same 2 cores.

The images are served by nginx from files (benchmarks/nginx.py): a Python server in this process took CPU from
both tools and hid most of their difference. The decode+resize floor (wit's image processing alone, no network)
says how close each tool comes to what the CPU allows.

    .venv/bin/python benchmarks/fetch.py [--images 3000] [--runs 3]

Writes benchmarks/results/fetch.json: images/s of each tool per run, medians, the ratio, successes, peak RSS.
"""

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from nginx import Nginx
from PIL import Image

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "fetch"
RESULTS = ROOT / "results" / "fetch.json"
BIN = Path(sys.executable).parent
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


def _photo(i: int) -> tuple[bytes, str]:
    """A synthetic-web picture at photo size with sensor-like grain, so JPEG sizes are those of the web."""
    from synthweb.draw import Drawing, render

    rng = np.random.default_rng(i)
    w = int(rng.integers(500, 1600))
    h = int(w * rng.uniform(0.6, 1.0))
    colour, shape = COLOURS[i % 6], SHAPES[(i // 6) % 6]
    d = Drawing(colour, shape, ("solid", "striped", "dotted")[i % 3], ("white", "noise", "gradient")[i % 3],
                "medium", "photo", w, h, seed=i)  # fmt: skip
    pixels = np.asarray(render(d), dtype=np.int16)
    pixels += rng.integers(-5, 6, size=pixels.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue(), f"a photo of a {colour} {shape}"


def make_images(n: int) -> list[tuple[bytes, str]]:
    """The image set, generated once (in parallel) and cached under benchmarks/work/."""
    cache = WORK / f"images-{n}"
    if (cache / "done").exists():
        captions = json.loads((cache / "captions.json").read_text())
        return [((cache / f"{i}.jpg").read_bytes(), captions[i]) for i in range(n)]
    cache.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        images = pool.map(_photo, range(n), chunksize=16)
    for i, (data, _) in enumerate(images):
        (cache / f"{i}.jpg").write_bytes(data)
    (cache / "captions.json").write_text(json.dumps([c for _, c in images]))
    (cache / "done").touch()
    return images


def image_folder(n: int) -> Path:
    """The folder nginx serves: the cached images, named by index, and a robots.txt that allows everything."""
    folder = WORK / f"images-{n}"
    (folder / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    return folder


def decode_resize_floor(images: list[bytes]) -> dict:
    """The CPU floor of a fetch: decode, resize to 256 px keep_ratio and re-encode (wit's process_image, which also
    computes the pHash and colour signature) of every image in one thread, no network. ms per image, and the
    images/s two cores would reach doing nothing else."""
    from pipeline.fetch.image import ImageConfig, process_image

    cfg = ImageConfig(image_size=256, resize_mode="keep_ratio")
    times = []
    for data in images:
        t0 = time.perf_counter()
        process_image(data, cfg)
        times.append((time.perf_counter() - t0) * 1000)
    mean = statistics.fmean(times)
    return {"median_ms": statistics.median(times), "mean_ms": mean, "floor_images_per_s_2_cores": 2 * 1000 / mean}


def tree_total(root: int, read) -> float:
    """The sum of `read(/proc/<pid>)` -> (parent pid, value) over a process and all its descendants (0 once gone)."""
    children: dict[int, list[int]] = {}
    values: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, value = read(entry)
        except OSError:  # the process ended while we looked
            continue
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        values[pid] = value
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += values.get(pid, 0.0)
        stack += children.get(pid, [])
    return total


def _rss_kib(entry: Path) -> tuple[int, float]:
    fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) if "VmRSS" in fields else 0
    return int(fields.get("PPid", "0").strip()), rss


def _tree_rss_mib(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    return tree_total(root, _rss_kib) / 1024


def timed(cmd: list[str], env: dict | None = None, log: Path = WORK / "last-stderr.log") -> tuple[float, float]:
    """(wall seconds, peak resident MiB of the whole process tree, sampled every 0.2 s) of one command.

    Sampled from /proc rather than taken from rusage: Linux carries ru_maxrss across fork and exec, so a child of
    this (image-holding) process would report this process's size.
    """
    # stderr to a file, not a pipe: a chatty child must never block on a full pipe
    with open(log, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_mib(proc.pid))
            time.sleep(0.2)
        wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {log.read_text(errors='replace')[-3000:]}")
    return wall, peak


def run_img2dataset(urls: Path, out: Path, env: dict, threads: int) -> dict:
    cmd = [str(BIN / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
           "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
           "--processes_count", "2", "--thread_count", str(threads), "--image_size", "256",
           "--resize_mode", "keep_ratio", "--encode_quality", "95", "--number_sample_per_shard", "1000",
           "--timeout", "10", "--retries", "0"]  # fmt: skip
    wall, rss = timed(cmd, env)
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"tool": "img2dataset", "wall_s": wall, "successes": ok, "images_per_s": ok / wall, "peak_rss_mib": rss}


def run_wit(urls: Path, out: Path, env: dict, threads: int, workers: int = 1) -> dict:
    """`wit fetch` as a user runs it: the default in-process FnApiRunner (its fetching threads use both cores, as
    decoding, resizing and socket reads release the GIL), or with `workers` SDK worker processes."""
    cmd = [str(BIN / "wit"), "fetch", "--candidates", str(urls), "--out", str(out), "--allow-private",
           "--threads", str(threads), "--image-size", "256", "--resize-mode", "keep_ratio",
           "--samples-per-shard", "1000"]  # fmt: skip
    if workers > 1:
        cmd += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    wall, rss = timed(cmd, env)
    ok = json.loads((out / "manifest.json").read_text())["rows"]
    tool = "wit fetch" if workers == 1 else f"wit fetch ({workers} workers)"
    return {"tool": tool, "wall_s": wall, "successes": ok, "images_per_s": ok / wall, "peak_rss_mib": rss}


def run_wit_2_workers(urls: Path, out: Path, env: dict, threads: int) -> dict:
    return run_wit(urls, out, env, threads, workers=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--i2d-threads", type=int, default=64, help="img2dataset threads per process")
    parser.add_argument("--wit-threads", type=int, default=64, help="wit fetch requests in flight per worker")
    args = parser.parse_args()

    images = make_images(args.images)
    sizes = sorted(len(data) for data, _ in images)
    floor = decode_resize_floor([data for data, _ in images])
    print(json.dumps({"decode_resize": floor}), flush=True)
    server = Nginx(image_folder(args.images)).__enter__()
    base = server.base_url
    urls = WORK / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{base}/{i}.jpg" for i in range(len(images))],
                             "caption": [c for _, c in images]}), urls)  # fmt: skip
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    runs = []
    for r in range(args.runs):
        # Alternate which tool goes first, so neither always meets a warm (or cold) page cache and server.
        order = (run_img2dataset, run_wit, run_wit_2_workers)
        order = order if r % 2 == 0 else order[::-1]
        for fn in order:
            out = WORK / f"out-{fn.__name__}"
            shutil.rmtree(out, ignore_errors=True)
            threads = args.i2d_threads if fn is run_img2dataset else args.wit_threads
            result = fn(urls, out, env, threads) | {"run": r}
            print(json.dumps(result), flush=True)
            runs.append(result)
    server.__exit__()

    tools = ("wit fetch", "wit fetch (2 workers)", "img2dataset")

    def med(tool: str, key: str) -> float:
        return statistics.median(x[key] for x in runs if x["tool"] == tool)

    summary = {
        "benchmark": "fetch",
        "what": "images/s fetching the same URL list from one loopback server into WebDataset shards, 256 px "
        "keep_ratio JPEG q95, on 2 cores: img2dataset with 2 processes; wit fetch as run by default (in-process "
        "runner) and with 2 worker processes",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": f"nginx {Nginx.version()} (1 worker process, sendfile), serving the images from files",
        "images": len(images),
        "image_bytes": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]},
        "settings": vars(args),
        "median_images_per_s": {t: med(t, "images_per_s") for t in tools},
        "median_peak_rss_mib": {t: med(t, "peak_rss_mib") for t in tools},
        "successes": {t: [x["successes"] for x in runs if x["tool"] == t] for t in tools},
        "runs": runs,
    }
    rates = summary["median_images_per_s"]
    summary["decode_resize_ms_per_image"] = {k: floor[k] for k in ("median_ms", "mean_ms")}
    summary["floor_images_per_s_2_cores"] = floor["floor_images_per_s_2_cores"]
    summary["fraction_of_floor"] = {t: rates[t] / floor["floor_images_per_s_2_cores"] for t in tools}
    summary["ratio_wit_over_img2dataset"] = rates["wit fetch"] / rates["img2dataset"]
    summary["ratio_wit_2_workers_over_img2dataset"] = rates["wit fetch (2 workers)"] / rates["img2dataset"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    keys = (
        "median_images_per_s",
        "ratio_wit_over_img2dataset",
        "ratio_wit_2_workers_over_img2dataset",
        "successes",
        "fraction_of_floor",
    )
    print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
    main()
