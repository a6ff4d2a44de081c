"""`wit web` (placeholder until its module lands)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("web", help="(not yet)")
