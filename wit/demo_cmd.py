"""`wit demo`: the whole mission on this machine, offline: a synthetic web on loopback -> crawl -> curated shards ->
stats report -> a tiny CLIP trained on them -> zero-shot and retrieval evaluation -> encode -> CLIP-score and
semantic-dedup filter judged against the web's ground truth -> a summary. Each step runs the public `wit` command
whose line it prints, so the demo reads as a script to adapt."""

import argparse
import json
import shutil
import time
from pathlib import Path

from clipmodel.train.config import AUGMENTATIONS
from wit import CommandError

STEPS = 9
# The demo's training recipe, from the experiments of benchmarks/recipe.py (results/recipe.json): at this data size a
# small ResNet learns shapes where the ViT of `tiny` learns only colours (zero-shot ~20%, chance 2.8%), 32 px and a
# 16-token context halve the step's cost, and lr 1e-3 is the fastest that did not collapse (2e-3 did). 3,600 steps,
# not 2,700: over 3 training seeds the held-out combinations went from 26.7-50% to 40-56.7%.
DEMO_RECIPE = {"model": "tiny-rn", "resolution": 32, "context_length": 16, "steps": 3600, "batch_size": 32,
               "lr": 1e-3, "augment": ()}  # fmt: skip
DEFAULT_PORT = 28530  # below Linux's ephemeral range (32768-60999), so outgoing connections do not take it
# What a demo writes under --out: a folder holding anything else is not replaced.
_OUTPUTS = frozenset(
    (
        "web",
        "crawl",
        "dataset",
        "report",
        "model.json",
        "run",
        "eval.json",
        "embeddings",
        "filtered",
        "run-filtered",
        "eval-filtered.json",
        "summary.json",
    )
)
_EPILOG = """\
most of the time goes to training (--steps of --batch-size pairs) and to drawing the web (--pages x
--images-per-page pictures, --eval-per-class); lower them to shrink the demo.
Writes OUT/web (the synthetic web and its ground truth), OUT/crawl, OUT/dataset, OUT/report, OUT/model.json,
OUT/run (checkpoints), OUT/eval.json, OUT/embeddings, OUT/filtered, OUT/run-filtered and OUT/eval-filtered.json (the
same training on the filtered dataset) and OUT/summary.json. Exits 0 only if every artifact exists and verifies.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthetic web -> crawl -> curated shards -> stats -> train CLIP -> eval -> encode -> filter -> retrain",
        description="The whole pipeline end to end on a synthetic web served on loopback: crawl it, build a curated "
        "dataset, report on it, train a tiny CLIP on it, evaluate zero-shot (classes seen in training captions and "
        "held-out combinations) and retrieval on a held-out shard, then encode the dataset with that model, "
        "filter it by CLIP score and semantic duplicates, judged against the web's ground truth, and train again "
        "on what the filter kept.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (an earlier demo's is replaced)")
    p.add_argument("--seed", type=int, default=0, help="the web, the training run and the filter's k-means")
    web = p.add_argument_group("the synthetic web and the build")
    web.add_argument(
        "--pages",
        type=int,
        default=96,
        help="pages of the synthetic web: data scale is what the tiny model most needs (default 96)",
    )
    web.add_argument("--images-per-page", type=int, default=50, help="on average (default 50)")
    web.add_argument("--eval-per-class", type=int, default=10, help="labelled eval images per class (default 10)")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="BASE",
                     help=f"serve the web's hosts on ports BASE, BASE+1, ...: sample keys hash the URL, port included, "
                     f"so fixed ports make the demo reproducible (default {DEFAULT_PORT}; 0: free ports, the shards' "
                     "order then changes run to run)")  # fmt: skip
    web.add_argument("--depth", type=int, default=10, help="crawl depth (default 10)")
    web.add_argument("--threads", type=int, default=32, help="fetches in flight (default 32)")
    web.add_argument("--image-size", type=int, default=96, help="smaller side of stored images (default 96)")
    web.add_argument("--samples-per-shard", type=int, default=256, help="default 256")
    train = p.add_argument_group("training and evaluation")
    train.add_argument(
        "--model", default=DEMO_RECIPE["model"], help=f"architecture (`wit model list`; default {DEMO_RECIPE['model']})"
    )
    train.add_argument(
        "--context-length",
        type=int,
        default=DEMO_RECIPE["context_length"],
        metavar="N",
        help="text context of the model: the web's captions are short, and the text tower costs "
        f"in proportion (default {DEMO_RECIPE['context_length']}; 0 keeps the architecture's 77)",
    )
    train.add_argument(
        "--resolution",
        type=int,
        default=DEMO_RECIPE["resolution"],
        metavar="PX",
        help="image size of the model: the web's shapes are plain at 32 px, and the image tower "
        f"costs in proportion (default {DEMO_RECIPE['resolution']}; 0 keeps the architecture's)",
    )
    train.add_argument(
        "--steps", type=int, default=DEMO_RECIPE["steps"], help=f"optimiser steps (default {DEMO_RECIPE['steps']})"
    )
    train.add_argument(
        "--batch-size",
        type=int,
        default=DEMO_RECIPE["batch_size"],
        help=f"contrastive batch (default {DEMO_RECIPE['batch_size']})",
    )
    train.add_argument(
        "--lr", type=float, default=DEMO_RECIPE["lr"], help=f"peak learning rate (default {DEMO_RECIPE['lr']:g})"
    )
    train.add_argument(
        "--augment",
        nargs="*",
        default=list(DEMO_RECIPE["augment"]),
        choices=AUGMENTATIONS,
        metavar="AUG",
        help="training augmentations (flip, rot90: the web's shapes are drawn at any "
        f"rotation; default: {' '.join(DEMO_RECIPE['augment']) or 'none'}; none: the flag alone)",
    )
    train.add_argument("--eval-every", type=int, default=0, metavar="N",
                       help="zero-shot on the web's labelled set every N steps, logged in RUN/metrics.jsonl for the "
                       "run page's curve (default: 6 times a run)")  # fmt: skip
    train.add_argument("--workers", type=int, default=1, help="data loader workers (default 1)")
    train.add_argument("--hold-out-shards", type=int, default=1, metavar="N",
                       help="the first N shards are kept out of training for retrieval (default 1)")  # fmt: skip
    filt = p.add_argument_group("the bootstrap filter")
    filt.add_argument("--top-fraction", type=float, default=0.85, help="keep the best CLIP scores (default 0.85)")
    # The tiny model's image embeddings sit close together (median nearest neighbour at cosine distance ~0.002 on
    # the default web) and pHash already took the near copies: at 0.001 SemDeDup removed ~11% of the dataset, none
    # of it true duplicates; 0.0002 takes only the closest pairs.
    filt.add_argument("--semdedup-eps", type=float, default=0.0002,
                      help="semantic duplicates: image cosine > 1 - EPS (default 0.0002)")  # fmt: skip
    p.set_defaults(func=run)


SECONDS: dict[str, float] = {}  # wall time of each command the demo ran, by name: the summary's timings


def _wit(args: argparse.Namespace, argv: list[str]) -> None:
    """Print the command line, then run it through the CLI itself (`args.run_command`, which wit.cli's main passes
    in, so this module never imports wit.cli): what is printed is what ran."""
    from wit.demo_steps import command_line

    print(command_line(argv), flush=True)
    t0 = time.monotonic()
    rc = args.run_command(argv)
    name = " ".join(argv[:2]) if argv[0] in ("web", "shards") else argv[0]
    SECONDS[name] = SECONDS.get(name, 0.0) + time.monotonic() - t0
    if rc != 0:
        raise CommandError(f"`wit {argv[0]}` failed (exit {rc})")


def _step(n: int, what: str) -> None:
    print(f"\n[{n}/{STEPS}] {what}", flush=True)


def _check_args(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.batch_size < 2 or args.hold_out_shards < 1:
        raise CommandError("--steps must be >= 1, --batch-size >= 2 and --hold-out-shards >= 1")
    if args.context_length != 0 and args.context_length < 8:
        raise CommandError("--context-length must be 0 (the architecture's) or at least 8")
    if args.resolution != 0 and args.resolution < 16:
        raise CommandError("--resolution must be 0 (the architecture's) or at least 16")
    if not (args.port == 0 or 1024 <= args.port <= 65535 - 16):
        raise CommandError(f"--port must be 0 (free ports) or a base in 1024..{65535 - 16}, got {args.port}")
    if not 0 < args.top_fraction <= 1 or not 0 < args.semdedup_eps < 1:
        raise CommandError("--top-fraction must lie in (0, 1] and --semdedup-eps in (0, 1)")


def run(args: argparse.Namespace) -> int:
    from wit import demo_steps as ds

    _check_args(args)
    out: Path = args.out
    _clear(out)
    paths = {
        "web": out / "web",
        "crawl": out / "crawl",
        "dataset": out / "dataset",
        "report": out / "report",
        "model": out / "model.json",
        "run": out / "run",
        "eval": out / "eval.json",
        "embeddings": out / "embeddings",
        "filtered": out / "filtered",
        "run_filtered": out / "run-filtered",
        "eval_filtered": out / "eval-filtered.json",
    }
    SECONDS.clear()
    t0 = time.monotonic()
    funnel = _web_crawl_build(args, paths)
    rows = ds.verified_dataset(paths["dataset"])
    report = _stats(paths)
    held_out, model = _train(args, paths)
    _eval(args, paths, held_out)
    _bootstrap(args, paths)
    _retrain(args, paths, model)

    _step(9, "checks and summary")
    checks = ds.Checks()
    checks.check("dataset", lambda: ds.verified_dataset(paths["dataset"]))
    checks.check("stats report", lambda: _exists(report))
    checks.check("checkpoint", lambda: ds.loaded_checkpoint(paths["run"]))
    zeroshot = checks.check("eval.json", lambda: ds.eval_numbers(paths["eval"], paths["web"] / "eval"))
    checks.check("embeddings", lambda: ds.complete_embeddings(paths["embeddings"], rows))
    filtered_rows = checks.check("filtered dataset", lambda: ds.verified_dataset(paths["filtered"]))
    truth = checks.check("filter vs truth", lambda: ds.filter_vs_truth(
        paths["dataset"], paths["filtered"], paths["web"] / "served" / "truth.parquet"))  # fmt: skip
    checks.check("retrained checkpoint", lambda: ds.loaded_checkpoint(paths["run_filtered"]))
    after = checks.check("eval-filtered.json", lambda: ds.eval_numbers(
        paths["eval_filtered"], paths["web"] / "eval", retrieval=False))  # fmt: skip
    seconds = SECONDS | {"total": time.monotonic() - t0}
    summary = {
        "paths": {k: str(v) for k, v in paths.items() if v.exists()} | {"report_page": str(report)},
        "funnel": funnel | {"dataset": rows, "filtered": filtered_rows},
        "zeroshot": zeroshot,
        "targets": ds.targets(zeroshot) if zeroshot else None,
        "filter_vs_truth": truth,
        "zeroshot_after_filter": after,
        "checks": checks.results,
        "seconds": seconds,
        "ok": checks.ok,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(ds.format_summary(summary))
    print(f"summary: {out / 'summary.json'}")
    return 0 if checks.ok else 1


def _clear(out: Path) -> None:
    """Remove an earlier demo's output; refuse a folder holding anything else, so a mistyped --out loses nothing."""
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUTS)
    if foreign:
        raise CommandError(f"--out {out} holds {', '.join(foreign[:3])}, which no demo wrote; choose another folder")
    shutil.rmtree(out)


def _exists(path: Path) -> str:
    if not path.is_file() or path.stat().st_size == 0:
        raise FileNotFoundError(f"{path} missing or empty")
    return str(path)


def _web_crawl_build(args: argparse.Namespace, paths: dict[str, Path]) -> dict:
    from synthweb import WebConfig

    web, crawl, dataset = paths["web"], paths["crawl"], paths["dataset"]
    cfg = WebConfig(seed=args.seed, pages=args.pages, images_per_page=args.images_per_page,
                    eval_per_class=args.eval_per_class)  # fmt: skip
    _step(1, f"a synthetic web: {cfg.pages} pages on {cfg.hosts} hosts, about {cfg.images_per_page} images a page, "
             f"{cfg.eval_per_class} labelled eval images per class")  # fmt: skip
    _wit(args, ["web", "generate", "--out", str(web), "--seed", str(cfg.seed), "--pages", str(cfg.pages),
                "--images-per-page", str(cfg.images_per_page),
                "--eval-per-class", str(cfg.eval_per_class)])  # fmt: skip
    with _serve(web, cfg.hosts, args.port) as served:
        print(f"      served on {', '.join(served.base_urls)} (in this process; `wit web serve {web}` does the same)")
        # The synthetic web lives on loopback, so private addresses are allowed for this run only.
        _step(2, "crawl it from its seeds")
        _wit(args, ["crawl", "--seeds", str(served.seeds_path), "--depth", str(args.depth), "--out", str(crawl),
                    "--allow-private", "--threads", str(args.threads)])  # fmt: skip
        _step(3, "build the curated dataset: text rules, language, dedup, balancing, fetch, image dedup")
        _wit(args, ["build", "--candidates", f"{crawl}/candidates-*.parquet", "--out", str(dataset), "--allow-private",
                    "--decontaminate", str(web / "eval"), "--threads", str(args.threads),
                    "--image-size", str(args.image_size),
                    "--samples-per-shard", str(args.samples_per_shard)])  # fmt: skip
    _wit(args, ["shards", "verify", str(dataset)])
    return _funnel(crawl, dataset)


def _serve(web: Path, hosts: int, base: int):
    from synthweb import serve_web

    ports = [base + i for i in range(hosts)] if base else None
    try:
        return serve_web(web, ports=ports)
    except OSError as e:
        raise CommandError(
            f"cannot serve the web on ports {base}-{base + hosts - 1} ({e.strerror}): another demo may "
            "be running; pass --port with another base, or --port 0 for free ports"
        ) from e


def _funnel(crawl: Path, dataset: Path) -> dict:
    import pyarrow.parquet as pq

    pages = sum(pq.read_metadata(f).num_rows for f in crawl.glob("pages-*.parquet"))
    counts = json.loads((dataset / "manifest.json").read_text())["counts"]
    dropped = {stage: sum(n for r, n in by.items() if r != "kept") for stage, by in counts.items()}
    dropped = {stage: n for stage, n in dropped.items() if n}
    kept = counts.get("shards", {}).get("kept", 0)
    return {"pages_crawled": pages, "candidates": kept + sum(dropped.values()), "dropped_by_stage": dropped}


def _stats(paths: dict[str, Path]) -> Path:
    """Step 4, the stats report (`wit stats`, run through its job's `run(argv)`)."""
    from beam_jobs import stats
    from wit.demo_steps import command_line

    _step(4, "the stats report of the dataset")
    argv = [str(paths["dataset"]), "--out", str(paths["report"])]
    print(command_line(["stats", *argv]), flush=True)
    t0 = time.monotonic()
    stats.run(argv)
    SECONDS["stats"] = time.monotonic() - t0
    html = paths["report"] / "index.html"
    print(f"      open {html}" if html.is_file() else f"      (no index.html: {paths['report']}/stats.json only)")
    return html if html.is_file() else paths["report"] / "stats.json"


def _train(args: argparse.Namespace, paths: dict[str, Path]) -> tuple[list[str], str]:
    """Step 5: train on every shard but the first --hold-out-shards; returns the held-out tars and the model spec."""
    from pipeline.shard_reader import list_shards

    tars = [str(paths["dataset"] / s.tar.path) for s in list_shards(paths["dataset"])]
    if len(tars) <= args.hold_out_shards:
        raise CommandError(
            f"the dataset has {len(tars)} shards: too few to hold {args.hold_out_shards} out of training; "
            "lower --samples-per-shard or grow the web (--pages, --images-per-page)"
        )
    held_out, train = tars[: args.hold_out_shards], tars[args.hold_out_shards :]
    _step(5, f"train a {args.model} CLIP on {len(train)} shards ({len(held_out)} held out for retrieval)")
    model = _model_spec(args, paths["model"])
    # Checkpoints every third of the run too: the filter scores with the first (see _bootstrap).
    _wit(args, _train_argv(args, train, model, paths["run"], paths["web"] / "eval", save_every=_filter_step(args)))
    return held_out, model


def _filter_step(args: argparse.Namespace) -> int:
    return max(1, args.steps // 3)


def _train_argv(
    args: argparse.Namespace, data: list[str], model: str, out: Path, eval_dir: Path, save_every: int = 0
) -> list[str]:
    """The demo's one training recipe, for the first run and the one on the filtered dataset: a checkpoint every
    `save_every` steps (default: only at the end), all of them kept."""
    warmup = max(1, min(100, args.steps // 10))
    every = save_every or args.steps
    saves = ["--save-every", str(every), "--keep", str(args.steps // every + 1)]
    evals = ["--eval-dir", str(eval_dir), "--eval-every", str(args.eval_every or max(1, args.steps // 6))]
    augment = ["--augment", *args.augment] if args.augment else []
    return ["train", "--data", *data, "--model", model, "--out", str(out), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", str(warmup),
            "--workers", str(args.workers), "--seed", str(args.seed), *augment, *evals, *saves]  # fmt: skip


def _model_spec(args: argparse.Namespace, path: Path) -> str:
    """--model as given, or (with a shorter --context-length or another --resolution) a JSON copy of its config with
    that text context and image size."""
    from dataclasses import replace

    from clipmodel.factory import load_config

    try:
        cfg = load_config(args.model)
        text, vision = cfg.text, cfg.vision
        if args.context_length and args.context_length < text.context_length:
            text = replace(text, context_length=args.context_length)
        if args.resolution and args.resolution != vision.image_size:
            vision = replace(vision, image_size=args.resolution)  # its checks: a ResNet's size divides by 32
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(f"--model {args.model}: {e}") from None
    if (text, vision) == (cfg.text, cfg.vision):
        return args.model
    path.write_text(json.dumps(replace(cfg, text=text, vision=vision).to_dict(), indent=2) + "\n")
    print(f"      {args.model} at {vision.image_size} px with a {text.context_length}-token text context: {path}")
    return str(path)


def _eval(args: argparse.Namespace, paths: dict[str, Path], held_out: list[str]) -> None:
    _step(6, "evaluate: zero-shot on the labelled set (train vs held-out classes, under shift), retrieval on the "
             "held-out shard")  # fmt: skip
    if len(held_out) > 1:
        print("      (retrieval on the first held-out shard)")
    _wit(args, ["eval", "--model", str(paths["run"]), "--web", str(paths["web"]), "--retrieval", held_out[0],
                "--out", str(paths["eval"])])  # fmt: skip


def _bootstrap(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    _step(7, "bootstrap: encode the dataset with the model a third into training, filter by CLIP score and "
             "semantic duplicates")  # fmt: skip
    # The run's first checkpoint, not its last: by the end the model has seen each pair ~10 times and learned the
    # wrong-class captions too, so they score well. Measured on web seeds 0, 1, 2: the last checkpoint's filter
    # removed 80 / 81 / 71% bad captions (recall 65 / 65 / 57%), this one 92 / 82 / 86% (75 / 66 / 69%).
    early = paths["run"] / "checkpoints" / f"step-{_filter_step(args):08d}.pt"
    _wit(args, ["encode", str(paths["dataset"]), "--model", str(early), "--out", str(paths["embeddings"]),
                "--workers", str(args.workers)])  # fmt: skip
    _wit(args, ["filter", str(paths["dataset"]), "--embeddings", str(paths["embeddings"]),
                "--out", str(paths["filtered"]), "--top-fraction", str(args.top_fraction),
                "--semdedup-eps", str(args.semdedup_eps),
                "--seed", str(args.seed), "--samples-per-shard", str(args.samples_per_shard)])  # fmt: skip


def _retrain(args: argparse.Namespace, paths: dict[str, Path], model: str) -> None:
    """Step 8: the same training (steps, batch, seed) on what the filter kept, evaluated zero-shot again: what the
    bootstrap filter is worth. Retrieval is not repeated: the filtered dataset holds the held-out shard's pairs."""
    _step(8, "train again on the filtered dataset (same steps, batch and seed), evaluate zero-shot")
    _wit(args, _train_argv(args, [str(paths["filtered"])], model, paths["run_filtered"], paths["web"] / "eval"))
    _wit(args, ["eval", "--model", str(paths["run_filtered"]), "--web", str(paths["web"]), "--out",
                str(paths["eval_filtered"])])  # fmt: skip
