"""`wit extract`: Common Crawl WARC/WAT files -> candidates and a record log, as Parquet."""

import argparse
from collections.abc import Sequence

import apache_beam as beam

from beam_jobs.options import split_args
from pipeline.rows_io import WriteRows
from pipeline.sources.warc import PAGES, ReadArchives
from schemas import CANDIDATE_SCHEMA, PAGE_SCHEMA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="WARC/WAT path or glob, e.g. 'crawl/*.warc.gz'")
    parser.add_argument("--out", required=True, help="output folder: candidates-*.parquet, pages-*.parquet")


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit extract", description=__doc__)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    out = args.out.rstrip("/")
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> ReadArchives(args.input)
        read.candidates | "WriteCandidates" >> WriteRows(f"{out}/candidates", CANDIDATE_SCHEMA)
        read[PAGES] | "WritePages" >> WriteRows(f"{out}/pages", PAGE_SCHEMA)
