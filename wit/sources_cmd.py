"""`wit crawl`, `wit extract`, `wit fetch`, `wit build`: candidates from crawls or WARC/WAT, images fetched, curated.

Each is a Beam job, run through wit.beam_cmd.
"""

import argparse

from wit.beam_cmd import add_job_command

_JOBS = {
    "crawl": ("beam_jobs.crawl", "crawl HTML pages from seed URLs into candidates (--seeds FILE --out DIR)"),
    "extract": ("beam_jobs.extract", "candidates from Common Crawl WARC/WAT files (--input GLOB --out DIR)"),
    "fetch": ("beam_jobs.fetch", "fetch candidates' images into a dataset (--candidates PATH --out DATASET)"),
    "build": (
        "beam_jobs.build",
        "curate, balance, fetch and deduplicate candidates into a dataset (--candidates PATH --out DATASET)",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, (module, help_text) in _JOBS.items():
        add_job_command(subparsers, name, module, help_text)
