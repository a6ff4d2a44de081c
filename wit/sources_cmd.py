"""`wit crawl`, `wit extract`, `wit fetch`, `wit build`: candidates from crawls or WARC/WAT, images fetched, curated.

Both are Beam jobs: the job's own parser reads the arguments (and `--help`), and Beam reads the rest. The jobs
are imported only when run, so `wit --help` does not pay for importing Beam.
"""

import argparse
import importlib

_JOBS = {
    "crawl": ("beam_jobs.crawl", "crawl HTML pages from seed URLs into candidates (--seeds FILE --out DIR)"),
    "extract": ("beam_jobs.extract", "candidates from Common Crawl WARC/WAT files (--input GLOB --out DIR)"),
    "fetch": ("beam_jobs.fetch", "fetch candidates' images into a dataset (--candidates PATH --out DATASET)"),
    "build": (
        "beam_jobs.build",
        "curate, balance, fetch and deduplicate candidates into a dataset (--candidates PATH --out DATASET)",
    ),
}


def _run_job(args: argparse.Namespace) -> int:
    module = importlib.import_module(_JOBS[args.command][0])
    module.run(args.argv)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, (_, help_text) in _JOBS.items():
        p = subparsers.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(func=_run_job, beam_args=True)
