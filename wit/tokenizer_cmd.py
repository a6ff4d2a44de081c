"""`wit tokenizer train`: learn a CLIP-style BPE merges file from a dataset's captions."""

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.shard_reader import list_shards
from schemas import fields
from wit import CommandError

# The smallest vocabulary: 256 byte symbols, the same ending a word, the two special tokens (clipmodel.tokenizer's
# MIN_VOCAB_SIZE, repeated here so that `wit --help` does not import torch).
_MIN_VOCAB_SIZE = 2 * 256 + 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a CLIP BPE tokenizer on a dataset's captions",
        description="CLIP's byte-level BPE tokenizer. The default vocabulary is OpenAI CLIP's (49,408 ids); "
        "`train` learns another from your captions.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    train = sub.add_parser(
        "train",
        help="learn a merges file from the captions of a dataset's shards",
        description="Learn BPE merges from the captions of a dataset (ours or img2dataset's) with CLIP's text "
        "cleanup and pre-tokenizer, and write them in the format of OpenAI's bpe_simple_vocab_16e6.txt.gz "
        "(gzip'd if FILE ends in .gz), which clipmodel.tokenizer.Tokenizer(FILE) loads.",
    )
    train.add_argument("--data", required=True, type=Path, metavar="DATASET", help="dataset directory")
    train.add_argument(
        "--vocab-size",
        required=True,
        type=int,
        metavar="N",
        help=f"ids in the vocabulary: 512 byte symbols + merges + 2 special tokens (at least {_MIN_VOCAB_SIZE})",
    )
    train.add_argument("--out", required=True, type=Path, metavar="FILE", help="merges file to write")
    train.add_argument(
        "--min-frequency", type=int, default=2, metavar="K", help="stop when no pair occurs K times (default 2)"
    )
    train.set_defaults(func=run_train)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def iter_captions(root: Path) -> Iterator[str]:
    """The captions of every sample in the dataset's shards, in shard order (an img2dataset row only if a success)."""
    try:
        shards = list_shards(root)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    if not shards:
        raise CommandError(f"{root}: the dataset has no shards")
    for shard in shards:
        path = root.joinpath(shard.parquet.path)  # list_shards has checked it stays inside the dataset
        try:
            names = pq.read_schema(path).names
            if fields.CAPTION not in names:
                raise CommandError(f"{path}: no {fields.CAPTION!r} column")
            # img2dataset writes a row for every URL it tried; only its successes are in the tar.
            columns = [fields.CAPTION] + ([fields.STATUS] if fields.STATUS in names else [])
            table = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise CommandError(f"{path}: cannot read ({e})") from None
        captions = table.column(fields.CAPTION).to_pylist()
        statuses = table.column(fields.STATUS).to_pylist() if fields.STATUS in columns else None
        for i, caption in enumerate(captions):
            if caption and (statuses is None or statuses[i] == fields.STATUS_SUCCESS):
                yield caption


def run_train(args: argparse.Namespace) -> int:
    if args.vocab_size < _MIN_VOCAB_SIZE:
        raise CommandError(
            f"--vocab-size {args.vocab_size} is too small: at least {_MIN_VOCAB_SIZE} "
            "(256 bytes, the same ending a word, 2 special tokens)"
        )
    if args.min_frequency < 1:
        raise CommandError(f"--min-frequency must be at least 1, got {args.min_frequency}")
    if not args.data.is_dir():
        raise CommandError(f"{args.data}: no such dataset directory")
    if not args.out.parent.is_dir():
        raise CommandError(f"{args.out.parent}: no such directory for --out")
    from clipmodel.tokenizer_train import train_bpe, write_merges  # imports torch: only when training

    captions = list(iter_captions(args.data))
    if not captions:
        raise CommandError(f"{args.data}: no captions in its shards")
    wanted = args.vocab_size - _MIN_VOCAB_SIZE
    # disable=None: a bar on a terminal, nothing in pipes and logs.
    with tqdm(total=wanted, unit="merge", desc="train", disable=None, file=sys.stderr) as bar:
        merges = train_bpe(captions, args.vocab_size, args.min_frequency, progress=lambda n: bar.update(n - bar.n))
        bar.update(len(merges) - bar.n)
    write_merges(args.out, merges)
    vocab = _MIN_VOCAB_SIZE + len(merges)
    short = (
        f"; asked for {args.vocab_size:,}, but no pair is left that occurs {args.min_frequency}+ times"
        if len(merges) < wanted
        else ""
    )
    print(f"wrote {args.out}: {len(merges):,} merges, vocab size {vocab:,}, from {len(captions):,} captions{short}")
    return 0
