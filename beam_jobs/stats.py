"""`wit stats`: a dataset (or two, --compare) -> REPORT_DIR/stats.json and, with the renderer, REPORT_DIR/index.html.

Every number comes from one Beam pass over the dataset's Parquet rows and rejections with combiners (fixed-bin
histograms, approximate quantiles, top-k, per-domain counts), so memory does not grow with the dataset; the tars are
opened only for the few samples the page shows. A training run folder (metrics.jsonl) is read directly instead.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.options import split_args
from clipmodel.train.log import METRICS_FILE
from pipeline import fsio
from pipeline.report.compare import compare_stats
from pipeline.report.stage import DatasetStats
from pipeline.shard_reader import load_manifest

STATS_NAME = "stats.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder (manifest.json), or a training run folder")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for stats.json and index.html")
    parser.add_argument("--compare", metavar="OTHER", help="a second dataset, reported side by side with DATASET")
    parser.add_argument("--seed", type=int, default=0, help="which samples the page shows (default 0)")
    parser.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                        help="with a training run: other runs drawn on its page's scaling charts (zero-shot against "
                        "samples seen and against dataset size, a line per dataset)")  # fmt: skip


def write_json_atomic(path: Path, value: dict) -> None:
    """Write JSON under a temporary name beside `path` and rename it over: readers never see half a report."""
    fsio.mkdirs(path.parent)
    with fsio.atomic_write(path) as f:
        f.write((json.dumps(value, indent=1, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"))


def dataset_stats(datasets: Sequence[Path], seed: int, options: PipelineOptions, work: Path) -> list[dict]:
    """The stats of each dataset, all computed in one Beam pipeline (each branch writes its JSON under `work`)."""
    manifests = [load_manifest(d) for d in datasets]  # before any pipeline: a bad dataset fails in a second
    work.mkdir(parents=True, exist_ok=True)
    outs = [work / f".stats-{i}.json" for i in range(len(datasets))]
    with beam.Pipeline(options=options) as p:
        for i, (dataset, manifest) in enumerate(zip(datasets, manifests, strict=True)):
            _ = (
                p
                | f"Stats{i}" >> DatasetStats(str(dataset), manifest, seed)
                | f"Write{i}" >> beam.Map(lambda s, path: write_json_atomic(Path(path), s), str(outs[i]))
            )
    results = []
    for out in outs:
        results.append(json.loads(out.read_text(encoding="utf-8")))
        out.unlink()
    return results


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def render(stats: dict, out: Path) -> Path | None:
    """index.html by the renderer (pipeline.report.render), if this checkout has it."""
    try:
        from pipeline.report.render import render_report
    except ModuleNotFoundError as e:
        if e.name != "pipeline.report.render":
            raise  # the renderer is here but one of its dependencies is not: say so, do not hide it
        return None
    return render_report(stats, out)


def run(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="wit stats", description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args, options = split_args(parser, list(sys.argv[1:] if argv is None else argv))
    dataset, out = Path(args.dataset), Path(args.out)
    if is_run_dir(dataset):
        if args.compare:
            raise ValueError("--compare takes two datasets, not a training run; compare runs with --runs")
        for other in args.runs:
            if not is_run_dir(Path(other)):
                raise FileNotFoundError(f"{other}: not a training run folder (no {METRICS_FILE})")
        from pipeline.report.run_stats import run_stats

        result = run_stats(dataset, [Path(r) for r in args.runs])
    else:
        if args.runs:
            raise ValueError("--runs takes training runs, drawn beside a training run given as the first argument")
        datasets = [dataset] + ([Path(args.compare)] if args.compare else [])
        for d in datasets:
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: no such dataset or run folder")
        computed = dataset_stats(datasets, args.seed, options, out)
        result = compare_stats(*computed) if args.compare else computed[0]
    write_json_atomic(out / STATS_NAME, result)
    page = render(result, out)
    where = f"{page}" if page is not None else f"{out / STATS_NAME} (no HTML: pipeline.report.render is not here)"
    print(f"report written: {where}")
    return result
