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

from beam_jobs.options import add_politeness_arguments, fetch_config, given, split_args
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

# Image settings a retry takes from the dataset it retries unless given: new samples must match the old ones.
_IMAGE = ImageConfig()  # the defaults: ImageConfig is their only home


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--candidates", help="URL list or candidates file(s): path or glob, or the --out folder of wit crawl/extract"
    )
    parser.add_argument("--format", default="auto", help="parquet, csv, tsv or jsonl (default: from the name)")
    parser.add_argument("--url-col", help="URL column (default: url/URL/...; a 0-based index without header)")
    parser.add_argument("--caption-col", help="caption column (default: caption/TEXT/...)")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """How to fetch and what to make of the images: shared by `wit fetch` and `wit build`."""
    parser.add_argument("--threads", type=int, default=64, help="requests in flight per worker")
    parser.add_argument(
        "--image-workers",
        type=int,
        default=0,
        help="processes per worker that decode and resize (default 0: in the fetching threads, which measured "
        "as fast on 2 cores; try the CPU count on bigger workers)",
    )
    parser.add_argument(
        "--samples-per-shard",
        type=int,
        metavar="N",
        help="wit fetch: not a cap; the candidates are spread over ceil(candidates / N) shards by a hash of their key, "
        "so a shard holds the successes of N candidates give or take about sqrt(N). wit build: exactly N per shard "
        "(the last one smaller). Default 10000 (a retry: as the dataset it retries)",
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
    add_fetch_arguments(parser)


def _image_config(args: argparse.Namespace, earlier: dict) -> ImageConfig:
    given = {"image_size": args.image_size, "resize_mode": args.resize_mode, "min_side": args.min_image_side}
    values = {k: v if v is not None else earlier.get(k, getattr(_IMAGE, k)) for k, v in given.items()}
    return ImageConfig(**values)


def _job_config(args: argparse.Namespace, retry: DatasetManifest | None) -> dict:
    """The config written into the manifest: what produced this dataset, so it can be reproduced or compared."""
    earlier = retry.config if retry else {}
    fetch_cfg = fetch_config(args, **given(tries=args.tries))
    config = {
        "job": "fetch",
        "fetch": dataclasses.asdict(fetch_cfg) | {"disallowed_directives": sorted(fetch_cfg.disallowed_directives)},
        "image": dataclasses.asdict(_image_config(args, earlier.get("image", {}))),
        "threads": args.threads,
        "samples_per_shard": args.samples_per_shard or earlier.get("samples_per_shard", 10_000),
    }
    if retry is None:
        sources = UrlListConfig(args.candidates, args.format, url_col=args.url_col, caption_col=args.caption_col)
        return config | {"sources": dataclasses.asdict(sources)}
    source = fsio.resolve(args.retry_failed)
    manifest_sha = hashlib.sha256(fsio.read_bytes(fsio.join(source, MANIFEST_NAME))).hexdigest()
    return config | {
        "retry_of": {"dataset": source, "manifest_sha256": manifest_sha, "reasons": sorted(reasons.TRANSIENT)},
        "sources": earlier.get("sources"),
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


def _candidate_count(args: argparse.Namespace, config: dict, retry: DatasetManifest | None) -> int:
    """Everything the job will account for, counted at launch: the list rows, or a retry's rejection rows."""
    if retry is None:
        return count_rows(UrlListConfig(**config["sources"]))
    return sum(fsio.parquet_rows(fsio.join(args.retry_failed, part.path)) for part in retry.rejected)


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit fetch", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    retry = _check(parser, args)
    config = _job_config(args, retry)
    fetch_cfg, image_cfg = fetch_config(args, **given(tries=args.tries)), ImageConfig(**config["image"])
    fingerprint = run_fingerprint(config)
    try:
        buckets = buckets_for(_candidate_count(args, config, retry), config["samples_per_shard"])
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
            read = p | "Read" >> ReadUrlLists(UrlListConfig(**config["sources"]))
            candidates, bad_rows = read.candidates, read[REJECTED]
        progress = not args.no_progress and sys.stderr.isatty()
        written = {"candidates": candidates, "rejected": bad_rows} | "Fetch" >> FetchBuckets(
            job, fetch_cfg, image_cfg, threads=args.threads, image_workers=args.image_workers, progress=progress
        )
        _ = written | "Finalize" >> FinalizeDataset(args.out, config, buckets, done, carried)
    fsio.remove_tree(work)
    print(format_host_summary(host_summary(args.out)))
