"""`wit crawl`: seed URLs -> breadth-first HTML crawl -> candidates and a page log, as Parquet."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam

from beam_jobs.options import add_politeness_arguments, fetch_config, split_args
from pipeline.rows_io import WriteRows
from pipeline.sources.crawl import CrawlConfig, CrawlPages
from schemas import CANDIDATE_SCHEMA, PAGE_SCHEMA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", required=True, type=Path, help="file with one start URL per line")
    parser.add_argument("--out", required=True, help="output folder: candidates-*.parquet, pages-*.parquet")
    parser.add_argument("--depth", type=int, default=2, help="link depth to follow (0: seeds only)")
    parser.add_argument("--allowed-domain", action="append", default=[], help="stay within (repeatable)")
    parser.add_argument("--threads", type=int, default=32, help="pages in flight per worker")
    add_politeness_arguments(parser)


def read_seeds(path: Path) -> list[str]:
    seeds = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not seeds:
        raise ValueError(f"{path}: no seed URLs")
    return seeds


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit crawl", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    cfg = CrawlConfig(depth=args.depth, allowed_domains=tuple(args.allowed_domain), threads=args.threads)
    fetch_cfg = fetch_config(args)
    seeds = read_seeds(args.seeds)
    out = args.out.rstrip("/")
    with beam.Pipeline(options=options) as p:
        crawled = p | "Crawl" >> CrawlPages(seeds, cfg, fetch_cfg)
        crawled["candidates"] | "WriteCandidates" >> WriteRows(f"{out}/candidates", CANDIDATE_SCHEMA)
        crawled["pages"] | "WritePages" >> WriteRows(f"{out}/pages", PAGE_SCHEMA)
