"""`wit search`: the samples of a dataset nearest a caption, an image file or another sample, through a faiss index.

faiss, torch and the model code are imported only when the command runs, so `wit --help` stays fast.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from clipmodel.embed.config import IndexConfig
from wit import CommandError

_D = IndexConfig()  # the defaults the help shows; None from a flag means this one

_EPILOG = """\
examples:
  wit search data/wit-v1 --embeddings data/wit-v1.emb --model runs/tiny "a red circle"
  wit search data/wit-v1 --embeddings data/wit-v1.emb --model runs/tiny --image query.jpg -k 20 --json
  wit search data/wit-v1 --embeddings data/wit-v1.emb --key shape00042       # its nearest neighbours, no model

The index is built on first use and kept in EMB/index/ (image.faiss or text.faiss, with a JSON description); it is
rebuilt when the embeddings change. Up to --ivf-threshold rows it is exact (flat); above, IVF-PQ whose candidates
are re-scored exactly. Scores are cosine similarities.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="find the samples nearest a caption, an image or another sample",
        description="Nearest samples of DATASET by CLIP embedding, from the folder `wit encode` wrote: the query is "
        "a caption (TEXT), an image file (--image) or a sample's own embedding (--key).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", help="the dataset the embeddings were made from")
    p.add_argument("text", nargs="?", metavar="TEXT", help="a caption to search for (needs --model)")
    p.add_argument("--embeddings", required=True, type=Path, metavar="EMB", help="the folder `wit encode` wrote")
    p.add_argument("--image", type=Path, metavar="FILE", help="search with this image instead (needs --model)")
    p.add_argument("--key", metavar="KEY", help="search with this sample's own embedding (no model needed)")
    p.add_argument("--model", metavar="CKPT", help="the model `wit encode` used: run folder, checkpoint or weights")
    p.add_argument("--arch", metavar="NAME", help="architecture of bare weights (`wit model list`), if not inferred")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="for the query (default %(default)s)")  # fmt: skip
    p.add_argument("-k", "--top-k", type=int, default=10, metavar="K", help="results to show (default %(default)s)")
    p.add_argument("--text-index", action="store_true", help="search the captions' embeddings, not the images'")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--index", choices=("auto", "flat", "ivfpq"), help=f"index kind (default {_D.kind})")
    p.add_argument("--ivf-threshold", type=int, metavar="N",
                   help=f"auto: IVF-PQ above N rows (default {_D.ivf_threshold:,})")  # fmt: skip
    p.add_argument("--nprobe", type=int, metavar="N", help=f"IVF lists visited per query (default {_D.nprobe})")
    p.add_argument("--rebuild", action="store_true", help="build the index again even if the saved one is fresh")
    # argparse leaves TEXT over when it follows an option (`DATASET --embeddings EMB "a red circle"`: an nargs="?"
    # positional matches nothing early). The leftovers are let through (beam_args) and the command's own arguments
    # parsed again intermixed, which also refuses anything it does not know.
    p.set_defaults(func=lambda args: run_search(p.parse_intermixed_args(args.argv)), beam_args=True)


def run_search(args: argparse.Namespace) -> int:
    given = [name for name in ("text", "image", "key") if getattr(args, name) is not None]
    if len(given) != 1:
        raise CommandError("give exactly one query: TEXT, --image FILE or --key KEY")
    if min(n for n in (args.top_k, args.nprobe, args.ivf_threshold) if n is not None) < 1:
        raise CommandError("--top-k, --nprobe and --ivf-threshold must be >= 1")
    from clipmodel.embed import search as S

    store = S.EmbeddingStore(args.embeddings)
    _check_dataset(args.dataset, args.embeddings, store.info)
    which = "text" if args.text_index else "image"
    queries = S.key_query(store, args.key, which) if args.key is not None else _encode_query(args, store.info)
    cfg = index_config(args)
    start = time.perf_counter()

    def building(plan: dict[str, Any]) -> None:
        what = "an IVF-PQ" if plan["kind"] == "ivfpq" else "a flat"
        print(f"building {what} index over {len(store)} {which} embeddings...", file=sys.stderr, flush=True)

    index = S.open_index(store, which, cfg, rebuild=args.rebuild, on_build=building)
    if index.built:
        where = S.index_paths(store.root, which)[0]
        print(f"built in {time.perf_counter() - start:.1f}s: {where}", file=sys.stderr)
    hits = S.search(store, index, queries, args.top_k)[0]
    if args.json:
        query = {name: str(getattr(args, name)) for name in given}
        info = {"kind": index.kind, "over": which, "rows": len(store)}
        print(json.dumps({"query": query, "index": info, "results": [h.to_dict() for h in hits]}, indent=2))
    else:
        _print_table(hits)
    return 0


def index_config(args: argparse.Namespace) -> IndexConfig:
    """The settings the flags give, IndexConfig's defaults for the others."""
    from pipeline import settings

    return IndexConfig(**settings.given(kind=args.index, ivf_threshold=args.ivf_threshold, nprobe=args.nprobe))


def _check_dataset(dataset: str, embeddings: Path, info: dict[str, Any]) -> None:
    """Results name the dataset's samples: refuse embeddings of another dataset, or of an earlier build of it."""
    from clipmodel.train.checkpointing import file_sha256
    from schemas.manifest import MANIFEST_NAME

    if "://" not in dataset and not Path(dataset).exists():
        raise CommandError(f"dataset {dataset} not found")
    if file_sha256(f"{dataset.rstrip('/')}/{MANIFEST_NAME}") != info.get("dataset_manifest_sha256"):
        raise CommandError(f"{embeddings} was not encoded from {dataset} as it is now; run `wit encode` again")


def _encode_query(args: argparse.Namespace, info: dict[str, Any]):
    if not args.model:
        raise CommandError("--model CKPT is required for a TEXT or --image query: the model `wit encode` used")
    if args.image is not None and not args.image.is_file():
        raise CommandError(f"image {args.image} not found")
    from PIL import Image

    from clipmodel.embed.search import check_model, encode_images, encode_texts
    from clipmodel.inference import load_model

    loaded = load_model(args.model, arch=args.arch, device=args.device)
    check_model(loaded, info)
    if args.text is not None:
        return encode_texts(loaded, [args.text])
    try:
        return encode_images(loaded, [args.image.read_bytes()])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL: "not an image"
        raise CommandError(f"{args.image}: not an image we can read ({type(e).__name__})") from None


def _cell(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())  # a caption's line breaks would break the table
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_table(hits) -> None:
    header = ("rank", "score", "key", "caption", "url")
    rows = [(str(h.rank), f"{h.score:.4f}", h.key, _cell(h.caption, 60), h.url or "") for h in hits]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        # Numbers right-aligned, text left-aligned.
        cells = [c.rjust(w) if i < 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
