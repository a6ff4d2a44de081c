"""`wit model`: the named CLIP architectures, with their image encoder, resolution, embedding width and size.

torch and the model code are imported only when a command runs, so `wit --help` stays fast.
"""

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="list the named CLIP architectures",
        description="The CLIP architectures `wit train` can build by name: OpenAI's releases and small CPU ones.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    ls = sub.add_parser(
        "list",
        help="name, image encoder, resolution, embed dim and parameters of every named config",
        description="One row per named config. Parameters are counted from shapes alone (nothing is allocated) "
        "and equal those of the released checkpoints.",
    )
    ls.set_defaults(func=run_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _encoder(vision) -> str:
    if vision.is_vit:
        return f"ViT {vision.layers}x{vision.width} /{vision.patch_size}"
    return f"ResNet {'-'.join(str(n) for n in vision.layers)} w{vision.width}"


def run_list(args: argparse.Namespace) -> int:
    from clipmodel.factory import count_parameters, list_models, load_config

    rows = []
    for name in list_models():
        cfg = load_config(name)
        millions = f"{count_parameters(cfg) / 1e6:.1f}M"
        rows.append((name, _encoder(cfg.vision), f"{cfg.vision.image_size}px", str(cfg.embed_dim), millions))
    header = ("name", "image encoder", "resolution", "embed dim", "parameters")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        # Text columns left-aligned, numbers right-aligned.
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    return 0
