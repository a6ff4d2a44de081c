"""What every job's entry point shares: splitting our flags from Beam's, and the offline default runner."""

import argparse
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

# Prism, Beam's newer default, downloads a binary at start; the in-process FnApiRunner works offline.
DEFAULT_RUNNER = "FnApiRunner"


def split_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, PipelineOptions]:
    """Our arguments, and a PipelineOptions from the rest (--runner, --project, ...), so any runner works."""
    args, beam_args = parser.parse_known_args(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
    return args, PipelineOptions(beam_args)
