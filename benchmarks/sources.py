"""Throughput of the candidate sources: WARC extraction (records/s) and HTML crawling (pages/s).

    .venv/bin/python benchmarks/sources.py [--records 20000] [--pages 120] [--runs 3]

Writes benchmarks/results/sources.json (medians of several runs, and every run). No side-by-side tool here:
cc2dataset needs Spark and a Common Crawl download, neither of which this machine has.
"""

import argparse
import glob
import io
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from beam_jobs import crawl, extract
from synthweb import WebConfig, generate_web, serve_web

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "sources"
RESULTS = ROOT / "results" / "sources.json"


def make_warc(path: Path, records: int, web_dir: Path) -> None:
    """`records` HTML responses (the synthetic web's pages, their {{hostN}} placeholders filled) in one .warc.gz."""
    pages = [p.read_bytes() for p in sorted(web_dir.glob("hosts/*/**/*.html"))]
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i in range(records):
            body = pages[i % len(pages)].replace(b"{{host", b"h").replace(b"}}", b".example")
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            uri = f"http://site{i % 97}.example/page/{i}.html"
            writer.write_record(
                writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers)
            )


def _timed(job, argv: list[str]) -> float:
    t0 = time.monotonic()
    job.run(argv)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=120)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    web_dir = WORK / f"web-{args.pages}"
    if not (web_dir / "truth.parquet").exists():
        generate_web(web_dir, WebConfig(seed=0, pages=args.pages, hosts=4))
    warc = WORK / f"bench-{args.records}.warc.gz"
    if not warc.exists():
        make_warc(warc, args.records, web_dir)

    runs = []
    for r in range(args.runs):
        out = WORK / "extract-out"
        shutil.rmtree(out, ignore_errors=True)
        wall = _timed(extract, ["--input", str(warc), "--out", str(out)])
        records = pq.read_table(glob.glob(f"{out}/pages-*.parquet")).num_rows
        candidates = pq.read_table(glob.glob(f"{out}/candidates-*.parquet")).num_rows
        runs.append({"what": "extract", "run": r, "wall_s": wall, "records": records, "candidates": candidates,
                     "records_per_s": records / wall})  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
        with serve_web(web_dir) as served:
            out = WORK / "crawl-out"
            shutil.rmtree(out, ignore_errors=True)
            argv = ["--seeds", str(served.seeds_path), "--depth", "30", "--out", str(out), "--allow-private"]
            wall = _timed(crawl, argv)
        pages = pq.read_table(glob.glob(f"{out}/pages-*.parquet")).num_rows
        runs.append({"what": "crawl", "run": r, "wall_s": wall, "pages": pages, "pages_per_s": pages / wall})
        print(json.dumps(runs[-1]), flush=True)

    summary = {
        "benchmark": "sources",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": vars(args),
        "warc": {"file": warc.name, "bytes": warc.stat().st_size},
        "median_extract_records_per_s": statistics.median(x["records_per_s"] for x in runs if x["what"] == "extract"),
        "median_crawl_pages_per_s": statistics.median(x["pages_per_s"] for x in runs if x["what"] == "crawl"),
        "note": "wall time of the whole Beam job on FnApiRunner, start-up included; crawl pages include the "
        "synthetic web's slow (2 s) and failing pages",
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("median_extract_records_per_s", "median_crawl_pages_per_s")}))


if __name__ == "__main__":
    sys.exit(main())
