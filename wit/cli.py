"""The `wit` command line: one parser, one sub-command group per module, one-line errors."""

import argparse
import sys
from collections.abc import Sequence

from wit import CommandError, demo_cmd, shards_cmd, web_cmd

# Each group module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
GROUPS = (web_cmd, shards_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wit",
        description="wit-builder: build WIT-style image-text datasets from the web and train CLIP on them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"wit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
