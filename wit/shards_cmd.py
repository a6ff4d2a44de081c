"""`wit shards`: list a dataset's shards and verify every file against its manifest."""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.shard_reader import list_shards, load_manifest, verify_dataset
from schemas.manifest import MANIFEST_NAME
from wit import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="list and verify a dataset's shards",
        description="Inspect a dataset on disk: ours (manifest.json) or, for `ls`, an img2dataset output folder.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="shards_command", metavar="SUBCOMMAND")

    verify = sub.add_parser(
        "verify",
        help="check every file against manifest.json; exit 1 on any mismatch",
        description="Check presence, size and sha256 of every file the manifest lists, Parquet row counts and "
        "sizes.json. Prints OK with counts, or one line per problem and exits 1.",
    )
    verify.add_argument("dataset", metavar="DATASET", type=Path, help="dataset directory")
    verify.set_defaults(func=run_verify)

    ls = sub.add_parser("ls", help="table of shards with rows and bytes, and totals")
    ls.add_argument("dataset", metavar="DATASET", type=Path, help="dataset directory (ours or img2dataset's)")
    ls.set_defaults(func=run_ls)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _dataset_dir(path: Path) -> Path:
    if not path.exists():
        raise CommandError(f"{path}: no such directory")
    if not path.is_dir():
        raise CommandError(f"{path}: not a directory")
    return path


def run_verify(args: argparse.Namespace) -> int:
    root = _dataset_dir(args.dataset)
    try:
        manifest = load_manifest(root)
    except (FileNotFoundError, ValueError) as e:  # SchemaVersionError is a ValueError
        raise CommandError(str(e)) from None
    total = sum(entry.bytes for entry in manifest.files())
    # disable=None: a bar on a terminal, nothing in pipes and logs.
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=None, file=sys.stderr) as bar:
        problems = verify_dataset(root, progress=lambda entry: bar.update(entry.bytes))
    if problems:
        for problem in problems:
            print(problem)
        print(f"wit shards verify: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 1
    print(
        f"OK: {_plural(len(manifest.shards), 'shard')}, {manifest.rows:,} rows, "
        f"{_plural(len(manifest.rejected), 'rejection file')}; {_plural(len(manifest.files()), 'file')}, "
        f"{total:,} bytes match {MANIFEST_NAME}"
    )
    return 0


def run_ls(args: argparse.Namespace) -> int:
    root = _dataset_dir(args.dataset)
    try:
        shards = list_shards(root)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"{'shard':<12}{'rows':>12}{'tar bytes':>16}{'parquet bytes':>16}")
    for shard in shards:
        print(f"{shard.name:<12}{shard.rows:>12,}{shard.tar.bytes:>16,}{shard.parquet.bytes:>16,}")
    rows = sum(s.rows for s in shards)
    tar_bytes = sum(s.tar.bytes for s in shards)
    parquet_bytes = sum(s.parquet.bytes for s in shards)
    print(f"{'total':<12}{rows:>12,}{tar_bytes:>16,}{parquet_bytes:>16,}")
    print(_plural(len(shards), "shard"))
    return 0
