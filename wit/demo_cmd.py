"""`wit demo`: the end-to-end run of what exists today, on a synthetic web served on loopback."""

import argparse
import json
import shutil
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthetic web -> Beam crawl -> Beam build (curate, balance, fetch, dedup) -> verified dataset",
        description="Runs what exists today end to end, offline: a synthetic web served on loopback is crawled and "
        "its candidates curated, balanced, fetched and deduplicated into a dataset by the Beam jobs, which is then "
        "verified. Training, evaluation and the stats report join the demo as they land.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pages", type=int, default=12, help="pages of the synthetic web")
    p.add_argument("--depth", type=int, default=3, help="crawl depth")
    p.add_argument("--threads", type=int, default=32, help="fetches in flight")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beam_jobs import build, crawl
    from pipeline.shard_reader import list_shards, verify_dataset
    from pipeline.synthweb import WebConfig, generate_web, serve_web

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    web_dir, crawl_dir, dataset = out / "web", out / "crawl", out / "dataset"
    t0 = time.monotonic()
    print(f"[1/4] generating a synthetic web (seed {args.seed}, {args.pages} pages) in {web_dir}")
    generate_web(web_dir, WebConfig(seed=args.seed, pages=args.pages))
    with serve_web(web_dir) as served:
        print(f"      serving it on {', '.join(served.base_urls)}")
        # The synthetic web lives on loopback, so private addresses are allowed for this run only.
        print(f"[2/4] wit crawl --seeds {served.seeds_path} --depth {args.depth} --out {crawl_dir}")
        crawl.run(
            ["--seeds", str(served.seeds_path), "--depth", str(args.depth), "--out", str(crawl_dir)]
            + ["--allow-private", "--threads", str(args.threads)]
        )
        eval_dir = web_dir / "eval"
        print(f"[3/4] wit build --candidates '{crawl_dir}/candidates-*.parquet' --out {dataset} \\")
        print(f"          --decontaminate {eval_dir}")
        build.run(
            ["--candidates", f"{crawl_dir}/candidates-*.parquet", "--out", str(dataset), "--allow-private"]
            + ["--decontaminate", str(eval_dir)]
            + ["--threads", str(args.threads), "--samples-per-shard", str(args.samples_per_shard)]
        )
    problems = verify_dataset(dataset)
    shards = list_shards(dataset)
    print(f"[4/4] wit shards verify {dataset}: " + ("OK" if not problems else f"{len(problems)} problems"))
    for p in problems:
        print(f"      problem: {p}")
    manifest = json.loads((dataset / "manifest.json").read_text())
    _print_funnel(manifest["counts"])
    print(f"done in {time.monotonic() - t0:.0f}s: {sum(s.rows for s in shards)} samples in {len(shards)} shards.")
    print(f"Look at it: wit shards ls {dataset}")
    print("Not in the demo yet (open issues): training, evaluation, the stats report.")
    return 1 if problems or not shards else 0


def _print_funnel(counts: dict) -> None:
    from schemas import reasons

    rows = [(n, stage, reason) for stage, by in counts.items() for reason, n in by.items() if reason != "kept"]
    total = sum(n for n, _, _ in rows) + counts.get("shards", {}).get("kept", 0)
    print(f"      funnel of {total} candidates:")
    for n, stage, reason in sorted(rows, key=lambda r: (-r[0], r[2])):
        print(f"      {n:6d}  {stage:<6} {reason:<20} {reasons.REASONS[reason].description}")
    print(f"      {counts.get('shards', {}).get('kept', 0):6d}  kept")
