"""Memory at scale: peak RSS of `wit fetch`, `wit build` and img2dataset as the input grows, and of the text phase.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,40000,160000] [--tools fetch,build,img2dataset]
                                         [--text-sizes 1000000,4000000,10000000]

Images: `--distinct` photos (benchmarks/fetch.py's generator, cached) served by nginx from files; sample i's URL is
`/{i % distinct}.jpg?n={i}`, so every sample has its own URL and key while the server's files stay few. Each tool
runs once per size (`--runs` for more), peak RSS summed over its whole process tree. `wit build` deduplicates
images, so it keeps about `distinct` of them and rejects the rest as duplicates: it is measured in candidates/s.
The text phase is `wit build`'s curation wiring (beam_jobs.build._curate, as benchmarks/curate.py runs it) on
benchmarks/curate.py's synthetic candidates, on the default in-process runner.

Results merge into benchmarks/results/scale.json by (tool, size): a run of some tools or sizes keeps the others.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fetch import BIN, image_folder, make_images, run_img2dataset, timed
from nginx import Nginx

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "scale"
RESULTS = ROOT / "results" / "scale.json"
TARGETS = {"rss_flat_within": 1.3, "rss_under_mib": 1536, "text_rss_under_mib": 4096}


def url_list(base: str, n: int, distinct: int, captions: list[str]) -> Path:
    path = WORK / f"urls-{n}.parquet"
    urls = [f"{base}/{i % distinct}.jpg?n={i}" for i in range(n)]
    caps = [f"{captions[i % distinct]} number {i}" for i in range(n)]  # distinct pairs, as distinct URLs
    pq.write_table(pa.table({"url": urls, "caption": caps}), path)
    return path


def run_wit(command: str, urls: Path, out: Path, env: dict, n: int) -> dict:
    cmd = [str(BIN / "wit"), command, "--candidates", str(urls), "--out", str(out), "--allow-private",
           "--threads", "64", "--image-size", "256", "--resize-mode", "keep_ratio", "--samples-per-shard", "1000",
           "--no-progress"]  # fmt: skip
    if command == "build":
        cmd.append("--no-balance")  # the synthetic captions name no query-list entry often enough to matter
    wall, rss = timed(cmd, env, log=WORK / "last-stderr.log")
    manifest = json.loads((out / "manifest.json").read_text())
    kept = manifest["rows"]
    result = {"tool": f"wit {command}", "n": n, "wall_s": wall, "kept": kept, "peak_rss_mib": rss}
    if command == "build":
        return result | {"candidates_per_s": n / wall}
    return result | {"successes": kept, "images_per_s": kept / wall}


def run_text(n: int) -> dict:
    import curate

    inputs = curate.make_candidates(n, 16)
    out = WORK / f"text-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, curate.__file__, "--child", "1", "--inputs", str(inputs), "--out", str(out)]
    wall, rss = timed(cmd, log=WORK / "last-stderr.log")
    shutil.rmtree(out, ignore_errors=True)
    return {"tool": "wit build text phase", "n": n, "wall_s": wall, "rows_per_s": n / wall, "peak_rss_mib": rss}


def _summary(results: dict) -> dict:
    by_tool: dict[str, dict] = {}
    for r in results.values():
        by_tool.setdefault(r["tool"], {})[r["n"]] = r
    out = {}
    for tool, sizes in sorted(by_tool.items()):
        ns = sorted(sizes)
        rss = {str(n): sizes[n]["peak_rss_mib"] for n in ns}
        entry = {"peak_rss_mib": rss}
        if len(ns) > 1:
            entry["rss_ratio_largest_over_smallest"] = sizes[ns[-1]]["peak_rss_mib"] / sizes[ns[0]]["peak_rss_mib"]
        if tool.startswith("wit") and "text" not in tool:
            entry["flat_within_target"] = entry.get("rss_ratio_largest_over_smallest", 0) <= TARGETS["rss_flat_within"]
            entry["under_target_mib"] = max(rss.values()) <= TARGETS["rss_under_mib"]
        if "text" in tool:
            entry["under_target_mib"] = max(rss.values()) <= TARGETS["text_rss_under_mib"]
        out[tool] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,40000,160000")
    parser.add_argument("--tools", default="fetch,build,img2dataset")
    parser.add_argument("--distinct", type=int, default=1000, help="distinct image files behind the URLs")
    parser.add_argument("--text-sizes", default="", help="candidate counts for the text phase (e.g. 1000000,4000000)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tools = [t for t in args.tools.split(",") if t.strip()]
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = {f"{r['tool']}@{r['n']}": r for r in old.get("results", [])}
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")

    def record(runs: list[dict]) -> None:
        best = dict(runs[0])
        for key in ("wall_s", "peak_rss_mib", "images_per_s", "candidates_per_s", "rows_per_s"):
            if key in best:
                best[key] = statistics.median(r[key] for r in runs)
        best["runs"] = len(runs)
        results[f"{best['tool']}@{best['n']}"] = best
        print(json.dumps(best), flush=True)

    images = make_images(args.distinct) if sizes and tools else []
    sizes_kb = sorted(len(d) // 1024 for d, _ in images)
    if sizes and tools:
        with Nginx(image_folder(args.distinct)) as server:
            for n in sizes:
                urls = url_list(server.base_url, n, args.distinct, [c for _, c in images])
                for tool in tools:
                    runs = []
                    for _ in range(args.runs):
                        out = WORK / f"out-{tool}"
                        shutil.rmtree(out, ignore_errors=True)
                        if tool == "img2dataset":
                            runs.append(run_img2dataset(urls, out, env, 64) | {"n": n})
                        else:
                            runs.append(run_wit(tool, urls, out, env, n))
                        shutil.rmtree(out, ignore_errors=True)
                    record(runs)
    for n in [int(s) for s in args.text_sizes.split(",") if s.strip()]:
        record([run_text(n) for _ in range(args.runs)])

    summary = {
        "benchmark": "scale",
        "what": "peak RSS of the whole process tree (sampled from /proc every 0.2 s) and throughput as the input "
        "grows: wit fetch, wit build (--no-balance) and img2dataset (2 processes x 64 threads) on URL lists served "
        "by nginx from files, 256 px keep_ratio; and the text phase of wit build on synthetic candidates",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": f"nginx {Nginx.version()}",
        "distinct_images": args.distinct,
        "image_kib": {"min": sizes_kb[0], "median": sizes_kb[len(sizes_kb) // 2], "max": sizes_kb[-1]}
        if sizes_kb
        else old.get("image_kib"),
        "targets": TARGETS,
        "by_tool": _summary(results),
        "results": sorted(results.values(), key=lambda r: (r["tool"], r["n"])),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["by_tool"], indent=1))


if __name__ == "__main__":
    main()
