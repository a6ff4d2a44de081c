"""The `wit` command line: one parser, one sub-command group per module, one-line errors."""

import argparse
import logging
import sys
from collections.abc import Sequence

from wit import (
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


def _quiet_import_noise() -> None:
    # Beam logs this on import whenever its GCP extras are absent, which is the normal case for local runs.
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_import_noise()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "beam_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv[argv.index(args.command) + 1 :]  # what a Beam job re-parses, its own flags and Beam's
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"wit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
