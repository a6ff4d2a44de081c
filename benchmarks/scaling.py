"""How data scale pays, as the CLIP paper's scaling plots: the demo's recipe trained on curated and raw datasets of
synthetic webs of two or three sizes, zero-shot accuracy logged while training (against samples seen) and at the
end (against dataset size), drawn on one `wit stats` run page.

    .venv/bin/python benchmarks/scaling.py [--pages 32 64 96] [--recipe NAME] [--web-seed 0] [--seeds 0 1 2] [--reuse]

Each web size is one web (benchmarks/recipe.py's datasets, shared with it): `raw` is `wit fetch` of every crawl
candidate, `curated` is `wit build`. Every run trains on all shards but the first (held out, as the demo does) with
the same recipe (benchmarks/recipe.py's EXPERIMENTS[--recipe], the demo's) and the same number of steps, so the
bigger datasets are seen fewer times each. Writes benchmarks/results/scaling.json (each run's curve and final
numbers, and per web size and dataset the top-1 of every training seed with their mean and range) and the report
page benchmarks/results/scaling/index.html (`wit stats RUN --runs ...`, the first seed's runs).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

from curation_ablation import _one_thread, _wit, make_datasets
from recipe import BASE, DEMO, EXPERIMENTS, run_result, train_and_eval

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.json"
REPORT = HERE / "results" / "scaling"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, nargs="+", default=[32, 64, 96])
    p.add_argument("--recipe", default=DEMO, choices=sorted(EXPERIMENTS))
    p.add_argument("--web-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    p.add_argument("--eval-every", type=int, default=300, metavar="STEPS")
    p.add_argument("--reuse", action="store_true", help="keep the runs an earlier invocation finished")
    args = p.parse_args()
    _one_thread()
    recipe = BASE | EXPERIMENTS[args.recipe]
    runs, entries = [], []
    for pages in args.pages:
        key = f"web{args.web_seed}-p{pages}x50"
        work = HERE / "work" / "recipe" / key
        if not (work / "curated" / "manifest.json").is_file():
            shutil.rmtree(work, ignore_errors=True)
            s = {"web_seed": args.web_seed, "pages": pages, "images_per_page": 50, "eval_per_class": 10,
                 "caption_mix": None}  # fmt: skip
            make_datasets(s, work)
        for seed in args.seeds:
            for arm in ("curated", "raw"):
                run = work / "scaling" / (f"{args.recipe}-{arm}" + (f"-seed{seed}" if seed else ""))
                if args.reuse and (run / "eval.json").is_file():  # finished earlier (its train_s, if any, kept)
                    saved = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
                    result = saved or run_result(run, work / "web", seed)
                else:
                    result = train_and_eval(work / arm, work / "web", run, recipe, seed, work, args.eval_every)
                metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
                curve = [(m["samples"], m["top1"]) for m in metrics if m["kind"] == "eval"]
                rows = sum(json.loads((work / arm / "sizes.json").read_text()).values())
                entries.append({"pages": pages, "arm": arm, "seed": seed, "dataset_rows": rows,
                                "curve_samples_top1": curve, **result})  # fmt: skip
                if seed == args.seeds[0]:
                    runs.append(run / "train")
                print(f"== {pages} pages, {arm}, seed {seed}: {rows} pairs, top1 {result['top1']:.3f}", flush=True)
    _wit(["stats", str(runs[0]), "--runs", *map(str, runs[1:]), "--out", str(REPORT)])
    summary = {
        "benchmark": "scaling",
        "recipe": {"name": args.recipe, **recipe},
        "web_seed": args.web_seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seeds": args.seeds,
        "by_size": by_size(entries),
        "runs": entries,
        "report": str((REPORT / "index.html").relative_to(HERE)),
    }
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")


def by_size(entries: list[dict]) -> list[dict]:
    """Per web size and dataset: the pairs, each seed's final top-1 and held-out top-1, their mean and range."""
    out: dict[tuple, dict] = {}
    for e in entries:
        fresh = {"pages": e["pages"], "arm": e["arm"], "pairs": e["dataset_rows"]}
        fresh |= {"seeds": [], "top1": [], "held_out": []}
        point = out.setdefault((e["pages"], e["arm"]), fresh)
        point["seeds"].append(e["seed"])
        point["top1"].append(e["top1"])
        point["held_out"].append(e["by_split"].get("held_out"))
    for point in out.values():
        for key in ("top1", "held_out"):
            values = [v for v in point[key] if v is not None]
            point[f"{key}_mean"] = statistics.mean(values) if values else None
            point[f"{key}_range"] = [min(values), max(values)] if values else None
    return list(out.values())


if __name__ == "__main__":
    sys.exit(main())
