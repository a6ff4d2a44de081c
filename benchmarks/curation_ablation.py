"""Does curation matter? The same model, budget and seeds trained on raw and on curated pairs from one synthetic web.

    .venv/bin/python benchmarks/curation_ablation.py            # 5 seeds x 3 arms, ~35 min on 2 idle cores
    .venv/bin/python benchmarks/curation_ablation.py --quick    # a smoke run, ~4 min
    .venv/bin/python benchmarks/curation_ablation.py --demo-recipe   # `wit demo`'s model and web, 3 seeds, ~35 min
    .venv/bin/python benchmarks/curation_ablation.py --reuse --oracle     # + the investigation arm, ~10 min more
    .venv/bin/python benchmarks/curation_ablation.py --pages 64 --caption-mix $MIX   # a noisier web -> *_noisy.json
        (the one measured: MIX=good=8,non_english=4,boilerplate=6,empty=4,mismatch=3)

One synthetic web (mismatched, non-English, boilerplate and empty alt text; exact and near duplicates; faults) is
generated, served on loopback and crawled once (`wit crawl`). Its candidates then become two datasets:
  raw      `wit fetch` of every candidate: what img2dataset gives with no filtering (it still drops what fails to
           download or decode, and images under 32 px, as img2dataset's own resize step would);
  curated  `wit build` at its defaults: text rules and language, URL dedup, query balancing, fetch, exact and near
           image dedup, decontamination against the web's eval images (as `wit demo` builds);
  filtered curated, then the bootstrap CLIP-score filter (as `wit demo` does): a first-pass model trained on curated
           with the same budget, `wit encode`, `wit filter --top-fraction 0.85`. The curated pipeline's product: the
           issue's test is filtered against raw (curated against raw is reported too).
Each arm trains the same tiny CLIP with the same steps, batch (so the same samples seen), learning-rate schedule
and seed (`wit train`), for each of --seeds, and is evaluated zero-shot on the web's labelled eval set and its
shifted copies (`wit eval --web`). The ground truth grades what each arm's pairs are (caption names the pictured
class, another class, none; duplicates; eval leaks), which is what explains the difference.
--oracle adds an investigation arm: the same build from the candidates less every alt text the truth says names
another class (what text rules cannot see and a perfect CLIP-score filter would remove). --reuse keeps the datasets
and the finished runs of the results JSON, so it adds arms or seeds without training the others again.
Writes benchmarks/results/curation_ablation.json (_quick with --quick, _noisy with --caption-mix).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ablation_truth import _mismatched, _rows, funnel, graded, rejections_graded

from schemas import fields
from synthweb import WebConfig, generate_web, serve_web

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "curation_ablation"
ARMS = ("raw", "curated", "filtered")
BOOTSTRAP_SEED = 100  # the first-pass model's seed: none of the arms' seeds, so no run is judged by its own twin
ARM_NOTES = {
    "raw": "wit fetch of every crawl candidate (no curation; as img2dataset with no filtering)",
    "curated": "wit build at its defaults, --decontaminate WEB/eval",
    "filtered": "curated, then the bootstrap CLIP-score filter: a first-pass model trained on curated with the same "
    "budget (seed 100), wit encode, wit filter --top-fraction F",
    "oracle": "investigation only: wit build of the candidates less every mismatched alt text (by the truth)",
}
COMMON = ["--allow-private", "--threads", "32", "--image-size", "96", "--samples-per-shard", "256"]
# The ViT the first measurements used (warm-up: a tenth of the steps), scoring with its last checkpoint.
OLD_RECIPE = {"model": "tiny", "lr": 5e-4, "score_at": 1.0}
SETTINGS = {  # the full run; --quick, --demo-recipe and flags override
    "full": {"pages": 48, "images_per_page": 50, "eval_per_class": 30, "steps": 200, "batch_size": 32,
             "top_fraction": 0.85, "seeds": [0, 1, 2, 3, 4]},
    "quick": {"pages": 12, "images_per_page": 30, "eval_per_class": 2, "steps": 20, "batch_size": 32,
              "top_fraction": 0.85, "seeds": [0, 1]},
    # `wit demo`'s recipe as it was measured (2,700 steps; the demo now trains 3,600) on its web size; 3 seeds, as
    # each run costs ~3 minutes here.
    "demo": {"pages": 96, "images_per_page": 50, "eval_per_class": 30, "steps": 2700, "batch_size": 32,
             "top_fraction": 0.85, "seeds": [0, 1, 2]},
}  # fmt: skip


def _wit(argv: list[str]) -> None:
    """One `wit` command through the CLI itself, as a user would type it."""
    from wit.cli import main

    print("$ wit " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"`wit {argv[0]}` failed (exit {rc})")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- the datasets ---------------------------------------------------------------------------------------------------


def make_datasets(s: dict, work: Path) -> dict[str, Any]:
    """Generate and serve the web, crawl it, and write both arms' datasets; their timings."""
    web, crawl = work / "web", work / "crawl"
    cfg = WebConfig(seed=s["web_seed"], pages=s["pages"], images_per_page=s["images_per_page"],
                    eval_per_class=s["eval_per_class"], caption_mix=s["caption_mix"])  # fmt: skip
    seconds = {}
    t = time.monotonic()
    summary = generate_web(web, cfg)
    seconds["generate_web"] = time.monotonic() - t
    with serve_web(web) as served:
        t = time.monotonic()
        _wit(["crawl", "--seeds", str(served.seeds_path), "--depth", "10", "--out", str(crawl), "--allow-private",
              "--threads", "32"])  # fmt: skip
        seconds["crawl"] = time.monotonic() - t
        candidates = f"{crawl}/candidates-*.parquet"
        t = time.monotonic()
        _wit(["fetch", "--candidates", candidates, "--out", str(work / "raw"), *COMMON])
        seconds["raw: wit fetch"] = time.monotonic() - t
        t = time.monotonic()
        _wit(["build", "--candidates", candidates, "--out", str(work / "curated"), "--decontaminate",
              str(web / "eval"), *COMMON])  # fmt: skip
        seconds["curated: wit build"] = time.monotonic() - t
    return {"web": summary.to_dict(), "candidates": _rows(crawl.glob("candidates-*.parquet")), "seconds": seconds}


def make_oracle(work: Path) -> dict[str, float]:
    """The investigation arm `oracle`: the same build from the same candidates less every alt text the truth says
    describes another class (what text rules cannot see: a perfect CLIP-score filter, `wit filter`, would catch
    them). Served again on the ports the crawl saw, so the candidates' URLs still answer."""
    import pyarrow as pa

    web, crawl = work / "web", work / "crawl"
    ports = [int(u.rstrip("/").rsplit(":", 1)[1]) for u in json.loads((web / "served" / "served.json").read_text())[
        "base_urls"]]  # fmt: skip
    truth = {r["url"]: r for r in pq.read_table(web / "served" / "truth.parquet").to_pylist()}
    table = pa.concat_tables([pq.read_table(f) for f in sorted(crawl.glob("candidates-*.parquet"))])
    pairs = zip(table[fields.URL].to_pylist(), table[fields.CAPTION].to_pylist(), strict=True)
    keep = [not _mismatched(truth.get(url), caption) for url, caption in pairs]
    folder = work / "oracle-candidates"
    folder.mkdir(exist_ok=True)
    pq.write_table(table.filter(pa.array(keep)), folder / "candidates-00000.parquet")
    t = time.monotonic()
    with serve_web(web, ports=ports, state_dir=work / "served-oracle"):
        _wit(["build", "--candidates", str(folder / "candidates-00000.parquet"), "--out", str(work / "oracle"),
              "--decontaminate", str(web / "eval"), *COMMON])  # fmt: skip
    return {"oracle: wit build": time.monotonic() - t, "oracle: candidates removed": keep.count(False)}


def make_filtered(work: Path, s: dict) -> dict[str, Any]:
    """The arm `filtered`: the curated dataset filtered by a model trained on it (DataComp's CLIP-score filter, with
    the first pass standing in for OpenAI's weights, which this offline machine has not got). The only stage that
    can see alt text naming another class: text rules cannot. Costs one more training run, not more samples seen by
    the model that is evaluated."""
    boot = work / "runs" / "bootstrap"
    t = time.monotonic()
    # As `wit demo` scores: with the checkpoint `score_at` into the run, before the model learns the wrong captions.
    at = max(1, round(s["steps"] * s["score_at"]))
    first_pass = train_and_eval(work / "curated", boot, work / "web", s, BOOTSTRAP_SEED, save_every=at)
    t_train = time.monotonic() - t
    t = time.monotonic()
    scorer = boot / "train" / "checkpoints" / f"step-{at:08d}.pt"
    _wit(["encode", str(work / "curated"), "--model", str(scorer), "--out", str(work / "embeddings"),
          "--workers", "1"])  # fmt: skip
    _wit(["filter", str(work / "curated"), "--embeddings", str(work / "embeddings"), "--out", str(work / "filtered"),
          "--top-fraction", str(s["top_fraction"]), "--samples-per-shard", "256"])  # fmt: skip
    return {
        "first_pass": first_pass,
        "seconds": {
            "filtered: first-pass train+eval": t_train,
            "filtered: wit encode + wit filter": time.monotonic() - t,
        },
    }


def train_and_eval(dataset: Path, run: Path, web: Path, s: dict, seed: int, save_every: int = 0) -> dict[str, Any]:
    """`wit train` on every shard of `dataset`, then `wit eval --web`: the numbers of one run. `save_every`: keep a
    checkpoint every so many steps too (default: only the last)."""
    if run.exists():
        shutil.rmtree(run)
    warmup = max(1, min(100, s["steps"] // 10))  # as `wit demo` sets it
    t = time.monotonic()
    _wit(["train", "--data", str(dataset), "--model", s["model"], "--out", str(run / "train"),
          "--steps", str(s["steps"]), "--batch-size", str(s["batch_size"]), "--lr", str(s["lr"]),
          "--warmup", str(warmup), "--workers", "1", "--seed", str(seed), "--save-every", str(save_every or s["steps"]),
          "--keep", "100", "--log-every", "10"])  # fmt: skip
    train_s = time.monotonic() - t
    t = time.monotonic()
    _wit(["eval", "--model", str(run / "train"), "--web", str(web), "--out", str(run / "eval.json"),
          "--workers", "1"])  # fmt: skip
    eval_s = time.monotonic() - t
    results = json.loads((run / "eval.json").read_text())
    zs = results["zeroshot"][str(web / "eval")]
    rob = results["robustness"][str(web / "eval")]
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if m.get("kind") == "train"]
    losses = [m["loss"] for m in trained]
    result = {
        "seed": seed,
        "top1": zs["top1"],
        "top5": zs["top5"],
        "by_split": {
            k: {"top1": v["top1"], "top5": v.get("top5"), "images": v["images"]} for k, v in zs["by_split"].items()
        },
        "shifts_top1": {name: v["top1"] for name, v in rob["sets"].items() if name != rob["reference"]},
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        # The loader skips samples without a caption (raw's empty alt text): read vs skipped, at the last log line.
        "loader": {k: trained[-1].get(k) for k in ("data_samples", "data_missing_caption")} if trained else None,
        "seconds": {"train": train_s, "eval": eval_s},
    }
    return result


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}  # fmt: skip


def aggregate(runs: list[dict]) -> dict[str, Any]:
    out = {"top1": _stats([r["top1"] for r in runs]), "top5": _stats([r["top5"] for r in runs])}
    for split in runs[0]["by_split"]:
        out[f"{split}_top1"] = _stats([r["by_split"][split]["top1"] for r in runs])
        out[f"{split}_top5"] = _stats([r["by_split"][split]["top5"] for r in runs])
    for shift in runs[0]["shifts_top1"]:
        out[f"shift_{shift}_top1"] = _stats([r["shifts_top1"][shift] for r in runs])
    return out


def _metric(run: dict, metric: str) -> float:
    if metric in run:
        return run[metric]
    split, _, k = metric.rpartition("_")  # "held_out_top1"
    return run["by_split"][split][k]


def verdict(agg: dict, runs: dict, better: str = "curated", worse: str = "raw", metric: str = "top1") -> dict:
    """The issue's test: `better` wins when its mean beats `worse`'s by more than the larger of the arms' std and its
    worst run beats the other's best. Also the paired view: the same seed gives both arms the same initial weights,
    so the per-seed differences have a spread of their own, smaller when the seed moves both arms alike."""
    c, r = agg[better][metric], agg[worse][metric]
    margin = c["mean"] - r["mean"]
    by_seed = {x["seed"]: _metric(x, metric) for x in runs[worse]}
    diffs = [_metric(x, metric) - by_seed[x["seed"]] for x in runs[better] if x["seed"] in by_seed]
    return {
        "arms": f"{better} - {worse}",
        "metric": metric,
        "margin": margin,
        "larger_std": max(c["std"], r["std"]),
        "ranges_separate": c["min"] > r["max"],
        "wins": margin > max(c["std"], r["std"]) and c["min"] > r["max"],
        "paired_differences": diffs,
        "paired_std": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "seeds_won": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
    }


def table(result: dict) -> str:
    lines = [f"{'arm':<8} {'samples':>7} {'its-class':>9} {'top1 all':>16} {'top1 train':>16} "
             f"{'top1 held-out':>16} {'top5 all':>16}"]  # fmt: skip
    for arm in result["aggregate"]:
        a, d = result["aggregate"][arm], result["datasets"][arm]

        def cell(m: str, a=a) -> str:
            return f"{100 * a[m]['mean']:5.1f} ± {100 * a[m]['std']:4.1f}" if m in a else "n/a"

        share = d["graded"]["caption_names_its_class_share"]
        lines.append(f"{arm:<8} {d['funnel']['samples']:>7} {100 * share:8.0f}% {cell('top1'):>16} "
                     f"{cell('train_top1'):>16} {cell('held_out_top1'):>16} {cell('top5'):>16}")  # fmt: skip
    for v in result["verdicts"]:
        lines.append(f"{v['arms']} {v['metric']}: {100 * v['margin']:+.1f} points (larger std "
                     f"{100 * v['larger_std']:.1f}); ranges separate: {v['ranges_separate']}; "
                     f"wins: {v['wins']}; seeds won {v['seeds_won']}")  # fmt: skip
    return "\n".join(lines)


def _one_thread() -> None:
    """torch on one intra-op thread, in this process and the loader's workers: with the tiny model a second thread
    only adds hand-off, which on a busy 2-core machine made `wit train` 7x slower (113 s against 15 s for 20 steps)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _earlier(out: Path, s: dict, reuse: bool) -> dict:
    """With --reuse, the results JSON of an earlier run of the same settings (its finished runs are kept)."""
    if not reuse or not out.is_file():
        return {}
    earlier = json.loads(out.read_text())
    same = all(earlier["settings"].get(k) == v for k, v in s.items() if k != "seeds")
    return earlier if same else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small web and few steps: a smoke run")
    p.add_argument("--demo-recipe", action="store_true",
                   help="`wit demo`'s model and recipe on its 96-page web, 3 seeds (the default is the first "
                   "measurement's: the ViT tiny, 200 steps); written to *_demo_recipe.json")  # fmt: skip
    for name in ("pages", "images_per_page", "eval_per_class", "steps", "batch_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2 3 4)")
    p.add_argument("--top-fraction", type=float, dest="top_fraction",
                   help="the filtered arm keeps this best fraction of CLIP scores (default 0.85)")  # fmt: skip
    p.add_argument("--web-seed", type=int, default=0)
    p.add_argument("--caption-mix", metavar="MIX",
                   help="alt-text kinds per deck of the web, e.g. good=8,boilerplate=6,non_english=4,empty=4 "
                   "(WebConfig.caption_mix; default: the web's own mix); written to *_noisy.json")  # fmt: skip
    p.add_argument("--oracle", action="store_true",
                   help="also the investigation arm: curated less the mismatched alt text (by the truth)")  # fmt: skip
    p.add_argument("--reuse", action="store_true",
                   help="keep the datasets, and the finished runs in the results JSON, of an earlier run")  # fmt: skip
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    preset = "quick" if args.quick else "demo" if args.demo_recipe else "full"
    s = dict(SETTINGS[preset])
    given = ("pages", "images_per_page", "eval_per_class", "steps", "batch_size", "seeds", "top_fraction")
    s |= {k: getattr(args, k) for k in given if getattr(args, k) is not None}
    s["web_seed"] = args.web_seed
    name = preset + ("_noisy" if args.caption_mix else "")
    if args.caption_mix:
        s["caption_mix"] = args.caption_mix
    s.setdefault("caption_mix", None)
    stem = "curation_ablation" + {"quick": "_quick", "demo": "_demo_recipe", "full": ""}[preset]
    stem += "_noisy" if args.caption_mix else ""
    out = args.out or HERE / "results" / f"{stem}.json"
    work = WORK / name
    if args.demo_recipe:
        from recipe import DEMO, EXPERIMENTS, MODELS  # here: recipe imports this module

        model = WORK / f"{name}-model.json"  # beside the work folder, which a fresh run empties
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_text(json.dumps(MODELS[EXPERIMENTS[DEMO]["model"]], indent=2) + "\n")
        s |= {"model": str(model), "lr": EXPERIMENTS[DEMO]["lr"], "recipe": DEMO, "score_at": 1 / 3}
    else:
        s |= OLD_RECIPE
    _one_thread()
    t_all = time.monotonic()
    load_start = _loadavg()
    earlier = _earlier(out, s, args.reuse)
    if args.reuse and (work / "made.json").is_file():
        made = json.loads((work / "made.json").read_text())
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        made = make_datasets(s, work)
    arms = ARMS + (("oracle",) if args.oracle else ())
    if not (work / "filtered" / "manifest.json").is_file():
        boot = make_filtered(work, s)
        made["first_pass"], made["seconds"] = boot["first_pass"], made["seconds"] | boot["seconds"]
    if args.oracle and not (work / "oracle" / "manifest.json").is_file():
        made["seconds"] |= make_oracle(work)
    (work / "made.json").write_text(json.dumps(made))
    truth = work / "web" / "served" / "truth.parquet"
    datasets = {arm: {"funnel": funnel(work / arm), "graded": graded(work / arm, truth)} for arm in arms}
    for arm in set(arms) - {"raw"}:
        datasets[arm]["rejected_by_truth"] = rejections_graded(work / arm, truth)
    runs: dict[str, list] = {arm: [] for arm in arms}
    for seed in s["seeds"]:
        for arm in arms:
            done = [r for r in earlier.get("runs", {}).get(arm, []) if r["seed"] == seed]
            print(f"\n== {arm}, seed {seed}{' (from the earlier results)' if done else ''} ==", flush=True)
            runs[arm].append(done[0] if done else train_and_eval(work / arm, work / "runs" / f"{arm}-{seed}",
                                                                 work / "web", s, seed))  # fmt: skip
    agg = {arm: aggregate(runs[arm]) for arm in arms}
    # The test is the first: the curated pipeline (wit build, then the bootstrap filter) against raw.
    verdicts = [
        verdict(agg, runs, "filtered", "raw"),
        verdict(agg, runs, "filtered", "raw", "held_out_top1"),
        verdict(agg, runs, "filtered", "raw", "top5"),
        verdict(agg, runs),
        verdict(agg, runs, "filtered", "curated"),
    ]
    if args.oracle:
        verdicts += [verdict(agg, runs, "oracle", "curated"), verdict(agg, runs, "oracle", "raw")]
    train_eval = {a: sum(r["seconds"]["train"] + r["seconds"]["eval"] for r in runs[a]) for a in arms}
    data = sum(v for k, v in made["seconds"].items() if not k.startswith("oracle"))
    result = {
        "what": "zero-shot accuracy of a tiny CLIP trained with the same budget on raw vs curated pairs of one web",
        "settings": s | {"warmup": max(1, min(100, s["steps"] // 10)), "stored_image_size": 96,
                         "samples_seen": s["steps"] * s["batch_size"]},  # fmt: skip
        "arms": {arm: ARM_NOTES[arm] for arm in arms},
        "web": made["web"],
        "candidates": made["candidates"],
        "datasets": datasets,
        "runs": runs,
        "aggregate": agg,
        "verdicts": verdicts,
        "first_pass": made.get("first_pass"),
        "curated_wins": verdicts[0]["wins"],
        "seconds": made["seconds"] | {
            **{f"{a}: train+eval": v for a, v in train_eval.items()},
            "benchmark (data, raw, curated and filtered runs)": data + sum(train_eval[a] for a in ARMS),
            "this invocation": time.monotonic() - t_all},  # fmt: skip
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": earlier.get("machine", {}).get("loadavg_start", load_start),
                    "loadavg_end": _loadavg(), "torch_threads": int(os.environ["OMP_NUM_THREADS"]),
                    "note": "2 cores shared with other jobs: timings vary with the load, accuracies do not"},
    }  # fmt: skip
    if "investigation" in earlier:
        result["investigation"] = earlier["investigation"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + table(result))
    print(f"time {result['seconds']['this invocation']:.0f}s; results: {out}")


if __name__ == "__main__":
    main()
