"""`wit web`: generate a synthetic web from a seed, and serve it on loopback.

The synthetic web (numpy, Pillow, pyarrow) is imported only when a command runs, so `wit --help` stays fast; the
help reads only its config, synthweb.spec.
"""

import argparse
import signal
import threading
import time
from pathlib import Path

from synthweb.spec import WebConfig
from wit import CommandError

_D = WebConfig()  # the defaults the help shows; None from a flag means this one


def register(subparsers: argparse._SubParsersAction) -> None:
    web = subparsers.add_parser(
        "web",
        help="generate or serve the synthetic web used by tests, benchmarks and the demo",
        description="A seeded, offline stand-in for the web: hosts with robots.txt, HTML pages, images with alt "
        "text, duplicates and every fault a fetcher meets, plus its ground truth and a labelled eval set.",
    )
    web.set_defaults(func=lambda args: _help(web))
    sub = web.add_subparsers(dest="web_command", metavar="SUBCOMMAND")

    gen = sub.add_parser("generate", help="write a synthetic web to a folder (same seed, same bytes)")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (an earlier web there is replaced)")
    gen.add_argument("--seed", type=int, help=f"the same seed, the same web (default {_D.seed})")
    gen.add_argument("--pages", type=int, help=f"regular HTML pages (default {_D.pages})")
    gen.add_argument("--hosts", type=int, help=f"hosts, each served on its own port (default {_D.hosts})")
    gen.add_argument("--images-per-page", type=int, help=f"on average (default {_D.images_per_page})")
    gen.add_argument("--eval-per-class", type=int,
                     help=f"eval images per class and shift (default {_D.eval_per_class})")  # fmt: skip
    gen.set_defaults(func=run_generate)

    serve = sub.add_parser("serve", help="serve a generated web on loopback until Ctrl-C")
    serve.add_argument("web_dir", type=Path, metavar="DIR", help="a folder written by `wit web generate`")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    serve.add_argument("--ports", default=None, help="comma-separated ports, one per host (default: free ports)")
    serve.add_argument("--state-dir", type=Path, default=None, help="where seeds.txt etc. go (default DIR/served)")
    serve.set_defaults(func=run_serve)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def web_config(args: argparse.Namespace) -> WebConfig:
    """The settings the flags give, WebConfig's defaults for the others."""
    from pipeline import settings

    flags = {k: getattr(args, k) for k in ("seed", "pages", "hosts", "images_per_page", "eval_per_class")}
    try:
        return WebConfig(**settings.given(**flags))
    except ValueError as e:
        raise CommandError(str(e)) from None


def run_generate(args: argparse.Namespace) -> int:
    from synthweb import generate_web

    cfg = web_config(args)
    t0 = time.monotonic()
    summary = generate_web(args.out, cfg)
    faults = sum(summary.faults.values())
    print(
        f"wrote a synthetic web to {args.out} in {time.monotonic() - t0:.1f}s: {summary.hosts} hosts, "
        f"{summary.pages} pages, {summary.images} image URLs ({summary.referenced_images} referenced by pages, "
        f"{faults} faulty URLs), {summary.eval_images} eval images"
    )
    print(f"held-out classes: {', '.join(summary.held_out)}")
    print(f"next: wit web serve {args.out}")
    return 0


def _ports(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CommandError(f"--ports must be comma-separated integers, got {text!r}") from None
    if not ports or any(not 0 <= p <= 65535 for p in ports):
        raise CommandError(f"--ports must be comma-separated integers in 0..65535, got {text!r}")
    return ports


def run_serve(args: argparse.Namespace) -> int:
    from synthweb import serve_web
    from synthweb.truth import SITE_FILE

    if not (args.web_dir / SITE_FILE).is_file():
        raise CommandError(f"{args.web_dir} holds no synthetic web (no {SITE_FILE}); run `wit web generate` first")
    try:
        served = serve_web(args.web_dir, host=args.host, ports=_ports(args.ports), state_dir=args.state_dir)
    except (ValueError, OSError) as e:
        raise CommandError(str(e)) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with served:
            print(f"serving {args.web_dir} on {len(served.base_urls)} hosts:")
            for i, url in enumerate(served.base_urls):
                print(f"  host {i}: {url}")
            print(f"seeds: {served.seeds_path}")
            print(f"urls: {served.urls_path}")
            print(f"truth: {served.truth_path}")
            print("press Ctrl-C to stop", flush=True)
            while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0
