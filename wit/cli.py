"""The `wit` command line: one parser, one sub-command group per module, one-line errors."""

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _quiet_import_noise() -> None:
    """A command prints only its own words: notices libraries print merely because they were imported are silenced,
    each by its logger and message, so their real warnings still show."""
    # Beam logs this on the root logger whenever its GCP extras are absent, which is the normal case for local runs.
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
    # albumentations, which img2dataset imports (interop with its datasets), asks PyPI for a newer version of itself
    # at import and warns when there is one; this is its own switch.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


# Before the command modules: importing them imports Beam, which logs at import.
_quiet_import_noise()

from wit import (  # noqa: E402
    CommandError,
    demo_cmd,
    encode_cmd,
    eval_cmd,
    filter_cmd,
    model_cmd,
    search_cmd,
    shards_cmd,
    sources_cmd,
    stats_cmd,
    tokenizer_cmd,
    train_cmd,
    web_cmd,
)

# Each group module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
# A command that runs a Beam job sets `beam_args=True`: arguments it does not know go to PipelineOptions.
GROUPS = (
    web_cmd,
    sources_cmd,
    shards_cmd,
    demo_cmd,
    model_cmd,
    search_cmd,
    tokenizer_cmd,
    train_cmd,
    encode_cmd,
    eval_cmd,
    filter_cmd,
    stats_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wit",
        description="wit-builder: build WIT-style image-text datasets from the web and train CLIP on them.",
        epilog="Commands that run a Beam job accept Beam's options too (--runner, --direct_num_workers, ...).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "beam_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv[argv.index(args.command) + 1 :]  # what a Beam job re-parses, its own flags and Beam's
    args.run_command = main  # how a command that runs others (wit demo) runs them, without importing this module
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"wit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
