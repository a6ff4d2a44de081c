"""`wit fetch`: candidates (URL lists or our candidate files) -> fetched, resized, hashed images -> a dataset."""

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam

from beam_jobs.options import add_politeness_arguments, fetch_config, split_args
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import RESIZE_MODES, ImageConfig
from pipeline.fetch.stage import REJECTED, FetchImages
from pipeline.sources.url_lists import REJECTED as SOURCE_REJECTED
from pipeline.sources.url_lists import ReadUrlLists, UrlListConfig
from pipeline.write_dataset import WriteDataset, buckets_for, completed_buckets, is_pending, run_fingerprint
from schemas import fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", required=True, help="URL list or candidates file(s): path or glob")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--format", default="auto", help="parquet, csv, tsv or jsonl (default: from the name)")
    parser.add_argument("--url-col", help="URL column (default: url/URL/...; a 0-based index without header)")
    parser.add_argument("--caption-col", help="caption column (default: caption/TEXT/...)")
    parser.add_argument("--threads", type=int, default=64, help="requests in flight per worker")
    parser.add_argument(
        "--image-workers",
        type=int,
        default=0,
        help="processes per worker that decode and resize (default 0: in the fetching threads, which measured "
        "as fast on 2 cores; try the CPU count on bigger workers)",
    )
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="keep_ratio")
    parser.add_argument("--min-image-side", type=int, default=32)
    parser.add_argument("--tries", type=int, default=3, help="tries for 429/503 responses")
    add_politeness_arguments(parser)


def configs(args: argparse.Namespace) -> tuple[UrlListConfig, FetchConfig, ImageConfig]:
    return (
        UrlListConfig(args.candidates, format=args.format, url_col=args.url_col, caption_col=args.caption_col),
        fetch_config(args, tries=args.tries),
        ImageConfig(image_size=args.image_size, resize_mode=args.resize_mode, min_side=args.min_image_side),
    )


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit fetch", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    list_cfg, fetch_cfg, image_cfg = configs(args)
    # Written into the manifest: what produced this dataset, so it can be reproduced or compared.
    config = {
        "job": "fetch",
        "sources": dataclasses.asdict(list_cfg),
        "fetch": dataclasses.asdict(fetch_cfg) | {"disallowed_directives": sorted(fetch_cfg.disallowed_directives)},
        "image": dataclasses.asdict(image_cfg),
        "threads": args.threads,
        "samples_per_shard": args.samples_per_shard,
    }
    fingerprint = run_fingerprint(config)
    done = completed_buckets(args.out, fingerprint) if Path(args.out).is_dir() else {}
    if done:
        print(f"resuming: {len(done)} buckets of an earlier run of this job are complete and kept")
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> ReadUrlLists(list_cfg)
        everything = (read.candidates, read[SOURCE_REJECTED]) | "AllCandidates" >> beam.Flatten()
        buckets = (
            everything
            | "CountCandidates" >> beam.combiners.Count.Globally()
            | "Buckets" >> beam.Map(buckets_for, args.samples_per_shard)
        )
        n = beam.pvalue.AsSingleton(buckets)
        todo = read.candidates | "Pending" >> beam.Filter(lambda c, n: is_pending(c[fields.KEY], n, done), n=n)
        bad_rows = read[SOURCE_REJECTED] | "PendingBad" >> beam.Filter(
            lambda r, n: is_pending(r[fields.KEY], n, done), n=n
        )
        fetched = todo | "Fetch" >> FetchImages(
            fetch_cfg, image_cfg, threads=args.threads, image_workers=args.image_workers
        )
        rejected = (bad_rows, fetched[REJECTED]) | "AllRejected" >> beam.Flatten()
        _ = {"samples": fetched.samples, "rejected": rejected} | "Write" >> WriteDataset(
            args.out, config, buckets, done
        )
