"""`wit crawl`: seed URLs -> breadth-first HTML crawl -> candidates and a page log, as Parquet."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam

from beam_jobs.options import add_politeness_arguments, fetch_flags, split_args
from pipeline.fetch.http import FetchConfig
from pipeline.rows_io import WriteRows
from pipeline.settings import given, layered, read_config_file
from pipeline.sources.crawl import CrawlConfig, CrawlPages
from schemas import CANDIDATE_SCHEMA, PAGE_SCHEMA

SECTIONS = ("crawl", "fetch")
_CRAWL = CrawlConfig()  # the defaults the flags' help shows: CrawlConfig is their only home


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", required=True, type=Path, help="file with one start URL per line")
    parser.add_argument("--out", required=True, help="output folder: candidates-*.parquet, pages-*.parquet")
    parser.add_argument(
        "--config", metavar="FILE", help="YAML/JSON file, sections crawl and fetch (gs:// etc. too); flags override it"
    )
    parser.add_argument("--depth", type=int, help=f"link depth to follow (0: seeds only; default {_CRAWL.depth})")
    parser.add_argument("--allowed-domain", action="append", help="stay within (repeatable; default: the seeds' hosts)")
    parser.add_argument("--threads", type=int, help=f"pages in flight per worker (default {_CRAWL.threads})")
    add_politeness_arguments(parser)


def read_seeds(path: Path) -> list[str]:
    seeds = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not seeds:
        raise ValueError(f"{path}: no seed URLs")
    return seeds


def resolve(args: argparse.Namespace) -> tuple[CrawlConfig, FetchConfig]:
    """Defaults, then the --config file's sections, then the flags given: the crawl's and its fetcher's config."""
    file = read_config_file(args.config, SECTIONS) if args.config else {}
    flags = given(depth=args.depth, threads=args.threads, allowed_domains=args.allowed_domain)
    return (
        layered(CrawlConfig, file.get("crawl"), flags, where="config section 'crawl'"),
        layered(FetchConfig, file.get("fetch"), fetch_flags(args, file.get("fetch")), where="config section 'fetch'"),
    )


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit crawl", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    try:
        cfg, fetch_cfg = resolve(args)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    seeds = read_seeds(args.seeds)
    out = args.out.rstrip("/")
    with beam.Pipeline(options=options) as p:
        crawled = p | "Crawl" >> CrawlPages(seeds, cfg, fetch_cfg)
        crawled["candidates"] | "WriteCandidates" >> WriteRows(f"{out}/candidates", CANDIDATE_SCHEMA)
        crawled["pages"] | "WritePages" >> WriteRows(f"{out}/pages", PAGE_SCHEMA)
