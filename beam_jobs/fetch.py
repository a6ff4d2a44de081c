"""`wit fetch`: candidates (URL lists or our candidate files) -> fetched, resized, hashed images -> a dataset.

With `--retry-failed DATASET` the candidates are instead that dataset's transient failures (timeouts, connection
and DNS errors, 5xx, 429): the output is a new version holding the earlier shards, the new successes, and every
rejection that still stands.
"""

import argparse
import dataclasses
import hashlib
import sys
from collections.abc import Sequence

import apache_beam as beam

from beam_jobs.fetch_config import FetchJobConfig, RunConfig, resolve
from beam_jobs.options import add_politeness_arguments, split_args
from pipeline import fsio
from pipeline.fetch.hosts import format_host_summary, host_summary
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import RESIZE_MODES, ImageConfig
from pipeline.fetch.retry import CARRIED, RETRY, ReadFailed, carry_shards, load_retry_source
from pipeline.fetch.stage import BucketJob, FetchBuckets
from pipeline.sources.url_lists import ReadUrlLists, UrlListConfig, count_rows
from pipeline.write_dataset import WORK_DIR, Carried, FinalizeDataset, buckets_for, completed_buckets, run_fingerprint
from schemas import DatasetManifest, reasons
from schemas.manifest import MANIFEST_NAME
from schemas.reasons import REJECTED

# The defaults the flags' help shows: the dataclasses are their only home (a flag left out is None).
_IMAGE, _RUN, _SOURCES = ImageConfig(), RunConfig(), UrlListConfig(pattern="")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--candidates", help="URL list or candidates file(s): path or glob, or the --out folder of wit crawl/extract"
    )
    parser.add_argument("--format", help=f"parquet, csv, tsv or jsonl (default {_SOURCES.format}: from the name)")
    parser.add_argument("--url-col", help="URL column (default: url/URL/...; a 0-based index without header)")
    parser.add_argument("--caption-col", help="caption column (default: caption/TEXT/...)")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """How to fetch and what to make of the images: shared by `wit fetch` and `wit build`."""
    parser.add_argument("--threads", type=int, help=f"requests in flight per worker (default {_RUN.threads})")
    parser.add_argument(
        "--image-workers",
        type=int,
        help=f"processes per worker that decode and resize (default {_RUN.image_workers}; 0 decodes in the fetching "
        "threads, which measured as fast on 2 cores; try the CPU count on bigger workers)",
    )
    parser.add_argument(
        "--samples-per-shard",
        type=int,
        metavar="N",
        help="wit fetch: not a cap; the candidates are spread over ceil(candidates / N) shards by a hash of their key, "
        "so a shard holds the successes of N candidates give or take about sqrt(N). wit build: exactly N per shard "
        f"(the last one smaller). Default {_RUN.samples_per_shard} (a retry: as the dataset it retries)",
    )
    parser.add_argument(
        "--image-size", type=int, help=f"default {_IMAGE.image_size} (a retry: as the dataset it retries)"
    )
    parser.add_argument(
        "--resize-mode", choices=RESIZE_MODES, help=f"default {_IMAGE.resize_mode} (a retry: as before)"
    )
    parser.add_argument("--min-image-side", type=int,
                        help=f"default {_IMAGE.min_side} (a retry: as the dataset it retries)")  # fmt: skip
    parser.add_argument("--tries", type=int, help=f"tries for 429/503 responses (default {FetchConfig().tries})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    add_politeness_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument(
        "--retry-failed",
        metavar="DATASET",
        help=f"fetch again only DATASET's transient failures ({', '.join(sorted(reasons.TRANSIENT))}) and write "
        "a new version of it to --out",
    )
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON file, one section per config (sources, fetch, image, run; gs:// etc. too); flags override it, "
        "and a retry's image settings and shard size start from DATASET's",
    )
    add_fetch_arguments(parser)


def _job_config(args: argparse.Namespace, cfg: FetchJobConfig, retry: DatasetManifest | None) -> dict:
    """The config written into the manifest: what produced this dataset, so it can be reproduced or compared."""
    config = {
        "job": "fetch",
        "fetch": dataclasses.asdict(cfg.fetch) | {"disallowed_directives": sorted(cfg.fetch.disallowed_directives)},
        "image": dataclasses.asdict(cfg.image),
        "threads": cfg.run.threads,
        "samples_per_shard": cfg.run.samples_per_shard,
    }
    if retry is None:
        return config | {"sources": dataclasses.asdict(cfg.sources)}
    source = fsio.resolve(args.retry_failed)
    manifest_sha = hashlib.sha256(fsio.read_bytes(fsio.join(source, MANIFEST_NAME))).hexdigest()
    return config | {
        "retry_of": {"dataset": source, "manifest_sha256": manifest_sha, "reasons": sorted(reasons.TRANSIENT)},
        "sources": retry.config.get("sources"),
    }


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DatasetManifest | None:
    if bool(args.candidates) == bool(args.retry_failed):
        parser.error("give exactly one of --candidates and --retry-failed")
    if not args.retry_failed:
        return None
    if fsio.resolve(args.retry_failed) == fsio.resolve(args.out):
        parser.error("--out must be a new folder: a retry writes a new version and leaves DATASET as it is")
    try:
        return load_retry_source(args.retry_failed)
    except ValueError as e:
        parser.error(str(e))


def _candidate_count(args: argparse.Namespace, cfg: FetchJobConfig, retry: DatasetManifest | None) -> int:
    """Everything the job will account for, counted at launch: the list rows, or a retry's rejection rows."""
    if retry is None:
        return count_rows(cfg.sources)
    return sum(fsio.parquet_rows(fsio.join(args.retry_failed, part.path)) for part in retry.rejected)


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit fetch", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    retry = _check(parser, args)
    try:
        cfg = resolve(args, retry.config if retry else None)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    config = _job_config(args, cfg, retry)
    fingerprint = run_fingerprint(config)
    try:
        buckets = buckets_for(_candidate_count(args, cfg, retry), cfg.run.samples_per_shard)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    done = completed_buckets(args.out, fingerprint) if fsio.is_dir(args.out) else {}
    done = {i: r for i, r in done.items() if r.buckets == buckets}
    if done:
        print(f"resuming: {len(done)} of {buckets} buckets of an earlier run of this job are complete and kept")
    carried = Carried(shards=retry.shards) if retry else Carried()
    if retry:
        carry_shards(args.retry_failed, args.out, carried.shards)
    work = fsio.join(args.out, WORK_DIR)
    fsio.remove_tree(work)  # spill files of an interrupted run: never read again
    job = BucketJob(args.out, buckets, fingerprint, work, carried.first_index(), frozenset(done))
    with beam.Pipeline(options=options) as p:
        if retry:
            read = p | "ReadFailed" >> ReadFailed(args.retry_failed, retry.rejected)
            candidates, bad_rows = read[RETRY], read[CARRIED]
        else:
            read = p | "Read" >> ReadUrlLists(cfg.sources)
            candidates, bad_rows = read.candidates, read[REJECTED]
        progress = not args.no_progress and sys.stderr.isatty()
        written = {"candidates": candidates, "rejected": bad_rows} | "Fetch" >> FetchBuckets(
            job, cfg.fetch, cfg.image, threads=cfg.run.threads, image_workers=cfg.run.image_workers, progress=progress
        )
        _ = written | "Finalize" >> FinalizeDataset(args.out, config, buckets, done, carried)
    fsio.remove_tree(work)
    print(format_host_summary(host_summary(args.out)))
