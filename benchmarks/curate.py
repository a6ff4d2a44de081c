"""Curation before the fetch (text rules + language, candidate dedup, query balancing) through Beam vs a plain loop.

    .venv/bin/python benchmarks/curate.py [--n 1000000] [--runs 3] [--rss-sizes 100000,1000000]

The same N candidates (LAION captions and URLs, varied; see make_candidates) go through `wit build`'s own curation
wiring (ReadUrlLists, then beam_jobs.build._curate) on FnApiRunner with 1 worker and with 2 worker processes, and
through a single-process loop over the same pure functions (curate, dedup_pure, balance_pure). Both write the kept
candidates, the rejections and the balance counts to Parquet, and must keep the same keys. Each configuration runs
as its own process, so the peak RSS of its whole process tree can be sampled from /proc.
Writes benchmarks/results/curate.json: rows/s of each configuration per run, medians, the ratios to the loop, peak
RSS per size. Targets from the issue: Beam >= 0.8x the loop on 1 worker and >= 1.5x it on 2.
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.parquet as pq
from fetch import timed  # benchmarks/fetch.py: a script's own folder is first on sys.path

from schemas import CANDIDATE_SCHEMA, REJECTION_SCHEMA, SAMPLE_SCHEMA, fields, reasons
from schemas.records import conform

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "curate"
RESULTS = ROOT / "results" / "curate.json"
LAION = ROOT.parent.parent / "shared" / "data" / "laion_sample_1000.parquet"
CONFIGS = ("loop", "beam_1worker", "beam_2workers")
# What curation adds to a candidate, typed as the sample schema types it.
KEPT_SCHEMA = pa.schema(
    list(CANDIDATE_SCHEMA) + [SAMPLE_SCHEMA.field(n) for n in (fields.LANG, fields.LANG_SCORE, fields.MATCHED_ENTRIES)],
    metadata=CANDIDATE_SCHEMA.metadata,
)
_VOCAB = "new vintage red blue small large free best hd cheap modern photo set for sale the with and 2019".split()
_TRACKING = ("utm_source=newsletter", "utm_medium=email&utm_campaign=spring", "fbclid=IwAR0x", "gclid=Cj0KCQ")


def _vary_caption(text: str, i: int, rng: random.Random) -> str:
    """A caption as another page might write it: words shuffled, added, dropped, re-cased, numbered, or junk."""
    words, r = text.split(), rng.random()
    if r < 0.40 or not words:
        return text
    if r < 0.52:
        rng.shuffle(words)
    elif r < 0.64:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_VOCAB))
    elif r < 0.76 and len(words) > 1:
        del words[rng.randrange(len(words))]
    elif r < 0.84:
        return rng.choice((str.upper, str.lower, str.title))(text)
    elif r < 0.92:
        return f"{text} {i}"
    elif r < 0.96:
        return rng.choice((f"IMG_{i:05d}.jpg", "image", f"DSC{i}", "click here", f"{i}"))  # boilerplate
    return " ".join(words)


def _unique_url(url: str, i: int) -> str:
    """The URL with the row number in its file name: the same host and shape, a different image."""
    parts = urlsplit(url)
    head, _, name = parts.path.rpartition("/")
    return urlunsplit(parts._replace(path=f"{head}/{i}-{name}"))


def _respell_url(url: str, rng: random.Random) -> str:
    """The same image URL spelled another way that normalize_url undoes: tracking parameters, fragment, case, port."""
    parts, r = urlsplit(url), rng.random()
    if r < 0.4:
        query = "&".join(q for q in (parts.query, rng.choice(_TRACKING)) if q)
        return urlunsplit(parts._replace(query=query))
    if r < 0.6:
        return urlunsplit(parts._replace(fragment="gallery"))
    if r < 0.8:
        return urlunsplit(parts._replace(netloc=parts.netloc.upper()))
    port = {"http": 80, "https": 443}.get(parts.scheme)
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}")) if port and ":" not in parts.netloc else url


def make_candidates(n: int, files: int, seed: int = 0) -> Path:
    """n (url, caption) rows in `files` Parquet files, generated once per (n, files, seed) under benchmarks/work/.

    About 6% reuse an earlier row's URL exactly, 6% respell one, 3% repeat an earlier pair, 0.4% have no usable
    URL; captions are the LAION sample's, varied by _vary_caption, so each appears ~n/1000 times in some form.
    """
    folder = WORK / f"candidates-{n}-{files}-{seed}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    base = pq.read_table(LAION, columns=["URL", "TEXT"]).to_pylist()
    rng = random.Random(seed)
    urls: list[str] = []
    captions: list[str | None] = []
    for i in range(n):
        row, r = rng.choice(base), rng.random()
        caption = _vary_caption(row["TEXT"] or "", i, rng)
        if i and r < 0.06:
            url = urls[rng.randrange(i)]
        elif i and r < 0.12:
            url = _respell_url(urls[rng.randrange(i)], rng)
        elif i and r < 0.15:
            j = rng.randrange(i)
            url, caption = urls[j], captions[j]
        elif r < 0.154:
            url = rng.choice(("", "/images/photo.jpg", "ftp://example.com/a.jpg"))
        else:
            url = _unique_url(row["URL"], i)
        urls.append(url)
        captions.append(caption)
    per_file = -(-n // files)
    for f in range(files):
        part = slice(f * per_file, (f + 1) * per_file)
        pq.write_table(pa.table({"url": urls[part], "caption": captions[part]}), folder / f"part-{f:03d}.parquet")
    (folder / "done").touch()
    return folder


def run_beam(inputs: Path, out: Path, workers: int) -> None:
    """`wit build`'s curation on FnApiRunner: kept candidates, rejections and balance counts written to `out`."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.build import _curate
    from beam_jobs.build_config import BuildConfig
    from pipeline.batches import BATCH_ROWS
    from pipeline.curate.balance import WriteBalanceCounts
    from pipeline.rows_io import WriteRows
    from pipeline.sources.url_lists import ReadUrlLists, UrlListConfig, count_rows
    from schemas.reasons import REJECTED

    cfg = BuildConfig(sources=UrlListConfig(str(inputs / "*.parquet")))
    mode = "multi_processing" if workers > 1 else "in_memory"
    options = PipelineOptions(runner="FnApiRunner", direct_num_workers=workers, direct_running_mode=mode)
    work = out / ".work"  # the stages' spill files, removed when the run is done (as `wit build` does)
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> ReadUrlLists(cfg.sources, batch_rows=BATCH_ROWS)
        kept, rejected, balanced = _curate(read.candidates, cfg, str(work), rows_hint=count_rows(cfg.sources))
        _ = kept | "WriteKept" >> WriteRows(str(out / "kept"), KEPT_SCHEMA, batched=True)
        for i, stage in enumerate(rejected):  # one sink per stage, as the job writes them (no Flatten of rows)
            _ = stage | f"WriteRejected{i}" >> WriteRows(str(out / f"rejected{i}"), REJECTION_SCHEMA, batched=True)
        # Not "rejected-unreadable": a sink deletes files matching its own prefix + "-*-of-*" when it finalizes, so
        # the "rejected" sink would delete these.
        _ = read[REJECTED] | "WriteUnreadable" >> WriteRows(str(out / "unreadable"), REJECTION_SCHEMA)
        _ = balanced | "WriteCounts" >> WriteBalanceCounts(str(out))
    shutil.rmtree(work, ignore_errors=True)


def run_loop(inputs: Path, out: Path) -> None:
    """The same work as run_beam, as one would write it without Beam: a loop, then the reference functions."""
    from beam_jobs.build_config import BuildConfig
    from pipeline.curate.balance import balance_pure, write_balance_counts
    from pipeline.curate.dedup import dedup_pure
    from pipeline.curate.text import curate, make_lang_id
    from pipeline.rejection import Rejected, rejection_row
    from pipeline.sources.url_lists import UrlListConfig, candidate_from_row, iter_rows, list_paths, resolve_columns

    cfg = BuildConfig(sources=UrlListConfig(str(inputs / "*.parquet")))
    lang_id = make_lang_id(cfg.text.lang_model)
    kept, rejected = [], []
    for path in list_paths(cfg.sources.pattern):
        source, columns = f"urls:{Path(path).name}", None  # the source name ReadUrlLists gives, so keys agree
        for index, row in enumerate(iter_rows(path, "parquet")):
            columns = columns or resolve_columns(row, cfg.sources, path)
            try:
                candidate = candidate_from_row(row, source, index, *columns)
            except Rejected as e:
                rejected.append(rejection_row(e.candidate, e.reason, e.detail))
                continue
            candidate, reason = curate(candidate, cfg.text, lang_id)
            if reason is None:
                kept.append(candidate)
            else:
                language = reason == reasons.LANGUAGE  # the detail _Curate gives
                detail = f"{candidate[fields.LANG]} {candidate[fields.LANG_SCORE]:.2f}" if language else ""
                rejected.append(rejection_row(candidate, reason, detail))
    kept, duplicates = dedup_pure(kept, cfg.dedup)
    balanced = balance_pure(kept, cfg.balance)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform(balanced.kept, KEPT_SCHEMA), out / "kept.parquet", compression="zstd")
    rejected += duplicates + balanced.rejected
    pq.write_table(conform(rejected, REJECTION_SCHEMA), out / "rejected.parquet", compression="zstd")
    write_balance_counts(out, balanced.counts_before, balanced.counts_after)


def _column(paths, name: str) -> list:
    return [v for p in sorted(paths) for v in pq.read_table(p, columns=[name]).column(name).to_pylist()]


def measure(config: str, inputs: Path, n: int) -> tuple[dict, set[str], Counter]:
    """One configuration in its own process: its timings, and the kept keys and rejection reasons it wrote."""
    out = WORK / f"out-{config}"
    shutil.rmtree(out, ignore_errors=True)
    workers = {"loop": 0, "beam_1worker": 1, "beam_2workers": 2}[config]
    load = os.getloadavg()[0]  # recorded because other work on a shared host shows up here first
    cmd = [sys.executable, __file__, "--child", str(workers), "--inputs", str(inputs), "--out", str(out)]
    wall, rss = timed(cmd, log=WORK / "last-stderr.log")
    inner = json.loads((out / "child.json").read_text())["seconds"]
    kept = set(_column(out.glob("kept*.parquet"), fields.KEY))
    why = Counter(_column([*out.glob("rejected*.parquet"), *out.glob("unreadable*.parquet")], fields.REASON))
    result = {"config": config, "n": n, "wall_s": wall, "inner_s": inner, "rows_per_s": n / wall, "peak_rss_mib": rss,
              "kept": len(kept), "rejected": sum(why.values()), "loadavg_before": load}  # fmt: skip
    return result, kept, why


def bench_size(n: int, runs: int, files: int, ceiling: bool = False) -> tuple[list[dict], dict]:
    """Every configuration `runs` times on n candidates (order rotated per run); raises if their outputs differ."""
    inputs = make_candidates(n, files)
    results, outputs = [], {}
    for r in range(runs):
        for config in CONFIGS[r % 3 :] + CONFIGS[: r % 3]:  # none always meets a warm (or cold) page cache
            result, kept, why = measure(config, inputs, n)
            results.append(result | {"run": r})
            outputs.setdefault(config, (kept, why))
            print(json.dumps(results[-1]), flush=True)
        if ceiling:
            results.append(measure_ceiling(inputs, n) | {"run": r, "loadavg_before": os.getloadavg()[0]})
            print(json.dumps(results[-1]), flush=True)
    kept, why = outputs["loop"]
    agree = {c: outputs[c][0] == kept and outputs[c][1] == why for c in CONFIGS}
    if not all(agree.values()):
        raise AssertionError(f"n={n}: kept keys or rejection reasons differ from the loop's: {agree}")
    funnel = {"candidates": n, "kept": len(kept), "rejected_by_reason": dict(why.most_common())}
    return results, funnel


def halves(inputs: Path) -> tuple[Path, Path]:
    """The input files split into two folders of links, for two independent loop processes."""
    files = sorted(inputs.glob("*.parquet"))
    parts = []
    for h in range(2):
        folder = inputs.parent / f"{inputs.name}-half{h}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for f in files[h::2]:
            (folder / f.name).symlink_to(f)
        parts.append(folder)
    return parts[0], parts[1]


def measure_ceiling(inputs: Path, n: int) -> dict:
    """What two cores give two processes that share nothing: the loop on each half of the input at once.

    Not the same work as the loop on all of it (dedup and balancing see only their half), so it is no contender;
    it is the machine's own ceiling for the 2-worker ratio (two vCPUs need not be two whole cores)."""
    procs, t0 = [], time.monotonic()
    for h, half in enumerate(halves(inputs)):
        out = WORK / f"out-ceiling-{h}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", "0", "--inputs", str(half), "--out", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise RuntimeError("a ceiling loop process failed")
    wall = time.monotonic() - t0
    return {"config": "loop_2procs_halves", "n": n, "wall_s": wall, "rows_per_s": n / wall}


def _child(workers: int, inputs: Path, out: Path) -> None:
    t = time.perf_counter()
    if workers:
        run_beam(inputs, out, workers)
    else:
        run_loop(inputs, out)
    (out / "child.json").write_text(json.dumps({"seconds": time.perf_counter() - t}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="candidates in the timed runs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-sizes", default="100000,1000000", help="sizes whose peak RSS is reported")
    parser.add_argument("--files", type=int, default=16, help="input Parquet files: Beam reads one per task")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: 0 = the loop, k = Beam on k workers
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return _child(args.child, args.inputs, args.out)

    WORK.mkdir(parents=True, exist_ok=True)
    runs, funnel = bench_size(args.n, args.runs, args.files, ceiling=True)
    rss_sizes = sorted({int(s) for s in args.rss_sizes.split(",") if s.strip()})
    rss_runs = [x for s in rss_sizes if s != args.n for x in bench_size(s, 1, args.files)[0]]

    def med(config: str, key: str) -> float:
        return statistics.median(x[key] for x in runs if x["config"] == config)

    def peak(n: int, config: str) -> float:
        return max(x["peak_rss_mib"] for x in runs + rss_runs if x["n"] == n and x["config"] == config)

    rates = {c: med(c, "rows_per_s") for c in CONFIGS}
    ceiling = med("loop_2procs_halves", "rows_per_s") / rates["loop"]
    summary = {
        "benchmark": "curate",
        "what": "candidates/s through text curation (ftfy, rules, fastText lite language ID), URL dedup and WIT "
        "balancing (wordfreq query list, t=20000), kept + rejected + counts written to Parquet; Beam is wit build's "
        "own curation wiring on FnApiRunner, the loop calls the same pure functions; wall time of the whole process",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "inputs", "out")},
        "funnel": funnel,
        "same_kept_keys_and_reasons": True,  # bench_size raises otherwise
        "median_rows_per_s": rates,
        "ratio_beam_1worker_over_loop": rates["beam_1worker"] / rates["loop"],
        "ratio_beam_2workers_over_loop": rates["beam_2workers"] / rates["loop"],
        "targets": {"beam_1worker_over_loop": 0.8, "beam_2workers_over_loop": 1.5},
        "machine_ceiling_2procs_over_loop": ceiling,  # two independent loops on halves: what 2 cores allow at best
        "peak_rss_mib": {str(s): {c: peak(s, c) for c in CONFIGS} for s in sorted(set(rss_sizes) | {args.n})},
        "runs": runs + rss_runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    keys = (
        "median_rows_per_s",
        "ratio_beam_1worker_over_loop",
        "ratio_beam_2workers_over_loop",
        "machine_ceiling_2procs_over_loop",
        "peak_rss_mib",
    )
    print(json.dumps({k: summary[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
