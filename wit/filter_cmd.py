"""`wit filter`: curate a dataset with its embeddings (CLIP score, semantic dedup, concepts, eval decontamination).

A Beam job: its own parser (beam_jobs.filter) reads the arguments and `--help`, and Beam reads the rest. The job,
and torch with it, is imported only when the command runs, so `wit --help` stays fast.
"""

import argparse

from wit import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "filter",
        help="keep the samples that pass CLIP-score, semantic-dedup, concept and decontamination filters "
        "(DATASET --embeddings EMB --out DATASET2)",
        add_help=False,  # the job's parser answers --help
    )
    p.set_defaults(func=run_filter, beam_args=True)


def run_filter(args: argparse.Namespace) -> int:
    from beam_jobs import filter as filter_job

    try:
        filter_job.run(args.argv)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    return 0
