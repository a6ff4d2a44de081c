"""`wit stats`: the statistics report of a dataset (or two side by side, or a training run): stats.json and HTML.

A Beam job (beam_jobs.stats), run through wit.beam_cmd.
"""

import argparse

from wit.beam_cmd import add_job_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_job_command(
        subparsers,
        "stats",
        "beam_jobs.stats",
        "report what a dataset holds and what its build dropped, or a training run's curves "
        "(DATASET|RUN_DIR [--compare OTHER] --out REPORT_DIR)",
    )
