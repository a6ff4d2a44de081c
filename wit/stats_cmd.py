"""`wit stats`: the statistics report of a dataset (or two side by side, or a training run): stats.json and HTML.

A Beam job: its own parser (beam_jobs.stats) reads the arguments and `--help`, and Beam reads the rest. The job is
imported only when the command runs, so `wit --help` stays fast.
"""

import argparse

from wit import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stats",
        help="report what a dataset holds and what its build dropped, or a training run's curves "
        "(DATASET|RUN_DIR [--compare OTHER] --out REPORT_DIR)",
        add_help=False,  # the job's parser answers --help
    )
    p.set_defaults(func=run_stats, beam_args=True)


def run_stats(args: argparse.Namespace) -> int:
    from beam_jobs import stats

    try:
        stats.run(args.argv)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise CommandError(str(e)) from None
    return 0
