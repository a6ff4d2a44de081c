"""What every job's entry point shares: splitting our flags from Beam's, and the offline default runner."""

import argparse
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import fsio
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.politeness import USER_AGENT_TOKEN, parse_optout_list, user_agent

# Prism, Beam's newer default, downloads a binary at start; the in-process FnApiRunner works offline.
DEFAULT_RUNNER = "FnApiRunner"
DASK_RUNNER = "beam_jobs.dask_runner.DaskRunner"
_FETCH = FetchConfig()  # the defaults the flags' help shows


def split_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, PipelineOptions]:
    """Our arguments, and a PipelineOptions from the rest (--runner, --project, ...), so any runner works."""
    args, beam_args = parser.parse_known_args(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
    return args, PipelineOptions(_dask_runner_by_name(beam_args))


def _dask_runner_by_name(beam_args: list[str]) -> list[str]:
    """`--runner=DaskRunner` (Beam knows it only by module path) means ours: Beam's with the fixes our jobs need."""
    out, names = [], ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")
    for i, arg in enumerate(beam_args):
        if arg.startswith("--runner=") and arg.split("=", 1)[1] in names:
            arg = f"--runner={DASK_RUNNER}"
        elif i > 0 and beam_args[i - 1] == "--runner" and arg in names:
            arg = DASK_RUNNER
        out.append(arg)
    return out


def add_politeness_arguments(parser: argparse.ArgumentParser) -> None:
    """The safety and politeness flags every job that fetches takes (crawl and fetch alike)."""
    parser.add_argument(
        "--allow-private",
        nargs="*",
        metavar="CIDR|IP[:PORT]",
        help="allow loopback/private targets: all of them with no value, else only these (e.g. 127.0.0.1:8000)",
    )
    parser.add_argument("--optout-list", help="file of domains or URL prefixes never to fetch")
    parser.add_argument("--user-agent-token", default=USER_AGENT_TOKEN, help="the name robots.txt rules match")
    parser.add_argument("--contact", help="URL or mailto: put in the User-Agent so site owners can reach you")
    # No defaults here: FetchConfig's are the only ones (fetch_config fills what is not given), shown in the help.
    parser.add_argument("--max-per-host", type=int,
                        help=f"requests in flight to one host (default {_FETCH.max_per_host})")  # fmt: skip
    parser.add_argument("--min-host-delay", type=float,
                        help=f"seconds between requests to one host (default {_FETCH.min_host_delay:g})")  # fmt: skip
    parser.add_argument("--timeout", type=float, help=f"read timeout in seconds (default {_FETCH.read_timeout:g})")
    parser.add_argument("--ignore-robots", action="store_true", help="do not fetch or obey robots.txt")


def given(**values) -> dict:
    """The settings a user gave: flags left unset (None) are dropped, so the config dataclass's defaults apply."""
    return {k: v for k, v in values.items() if v is not None}


def fetch_config(args: argparse.Namespace, **extra) -> FetchConfig:
    optout = parse_optout_list(fsio.read_text(args.optout_list)) if args.optout_list else ()
    return FetchConfig(
        user_agent=user_agent(args.user_agent_token, args.contact),
        user_agent_token=args.user_agent_token,
        **given(read_timeout=args.timeout, max_per_host=args.max_per_host, min_host_delay=args.min_host_delay),
        allow_private=args.allow_private == [],
        private_allowlist=tuple(args.allow_private or ()),
        optout=optout,
        respect_robots=not args.ignore_robots,
        **extra,
    )
