"""`wit filter`: curate a dataset with its embeddings (CLIP score, semantic dedup, concepts, eval decontamination).

A Beam job (beam_jobs.filter), run through wit.beam_cmd: torch is imported only when the command runs.
"""

import argparse

from wit.beam_cmd import add_job_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_job_command(
        subparsers,
        "filter",
        "beam_jobs.filter",
        "keep the samples that pass CLIP-score, semantic-dedup, concept and decontamination filters "
        "(DATASET --embeddings EMB --out DATASET2)",
    )
