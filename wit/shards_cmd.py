"""`wit shards` (placeholder until its module lands)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("shards", help="(not yet)")
