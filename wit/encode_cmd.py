"""`wit encode`: image and caption embeddings of a dataset, per shard, in clip-retrieval's layout; resumable.

torch and the model are imported only when the command runs, so `wit --help` stays fast.
"""

import argparse

from clipmodel.embed.config import EncodeConfig
from wit import CommandError

_D = EncodeConfig()  # the defaults the help shows; None from a flag means this one


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode",
        help="embed every sample of a dataset with a CLIP model (for filter, search and eval)",
        description="Embed the images and captions of DATASET (ours or img2dataset's) with a CLIP model: a `wit train` "
        "run folder or checkpoint, or released OpenAI-layout weights (.safetensors or a plain .pt state dict). Writes "
        "EMB/img_emb/*.npy, EMB/text_emb/*.npy (float16, L2-normalised), EMB/metadata/*.parquet (key, caption, url) "
        "and EMB/embeddings.json. Run it again to finish an interrupted encode: whole shards are kept.",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder or URL")
    p.add_argument("--model", required=True, metavar="CKPT", help="run folder, checkpoint or weights file")
    p.add_argument("--arch", metavar="NAME", help="architecture of a bare weights file (default: from its shapes)")
    p.add_argument("--out", required=True, metavar="EMB", help="embeddings folder to write (or complete)")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"samples per forward pass (default {_D.batch_size})")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"processes reading and decoding shards (default {_D.workers})")  # fmt: skip
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default %(default)s")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help=f"default {_D.precision} (auto: bf16 autocast on GPU, fp32 on CPU)")  # fmt: skip
    p.add_argument("--limit-shards", type=int, metavar="N", help="only the first N shards")
    p.set_defaults(func=run_encode)


def encode_config(args: argparse.Namespace) -> EncodeConfig:
    """The settings the flags give, EncodeConfig's defaults for the others."""
    from pipeline import settings

    flags = settings.given(batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                           limit_shards=args.limit_shards)  # fmt: skip
    try:
        return EncodeConfig(**flags)
    except ValueError as e:
        raise CommandError(str(e)) from None


def run_encode(args: argparse.Namespace) -> int:
    from clipmodel.embed.encode import encode_dataset
    from clipmodel.inference import load_model

    cfg = encode_config(args)
    loaded = load_model(args.model, arch=args.arch, device=args.device)
    print(f"model: {loaded.description}")
    s = encode_dataset(args.dataset, loaded, args.out, cfg, progress=True)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) or "none"
    print(f"encoded {s.samples} samples from {s.encoded_shards} shards in {s.seconds:.1f}s "
          f"({s.samples_per_s:.1f}/s); {s.resumed_shards} shards already done; skipped: {skipped}")  # fmt: skip
    print(f"embeddings: {args.out}")
    return 0
