"""What every job's entry point shares: splitting our flags from Beam's, the offline default runner, the fetch flags."""

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import fsio
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.politeness import parse_optout_list, user_agent
from pipeline.settings import given

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
    # No defaults here: FetchConfig's are the only ones (a flag left out is None), shown in the help.
    parser.add_argument(
        "--allow-private",
        nargs="*",
        metavar="CIDR|IP[:PORT]",
        help="allow loopback/private targets: all of them with no value, else only these (e.g. 127.0.0.1:8000)",
    )
    parser.add_argument("--optout-list", help="file of domains or URL prefixes never to fetch")
    parser.add_argument("--user-agent-token",
                        help=f"the name robots.txt rules match (default {_FETCH.user_agent_token})")  # fmt: skip
    parser.add_argument("--contact", help="URL or mailto: put in the User-Agent so site owners can reach you")
    parser.add_argument("--max-per-host", type=int,
                        help=f"requests in flight to one host (default {_FETCH.max_per_host})")  # fmt: skip
    parser.add_argument("--min-host-delay", type=float,
                        help=f"seconds between requests to one host (default {_FETCH.min_host_delay:g})")  # fmt: skip
    parser.add_argument("--timeout", type=float, help=f"read timeout in seconds (default {_FETCH.read_timeout:g})")
    parser.add_argument("--ignore-robots", action="store_true", default=None, help="do not fetch or obey robots.txt")


def fetch_flags(args: argparse.Namespace, below: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The FetchConfig settings the flags give, for `pipeline.settings.layered`.

    `below` is the layer under the flags (a config file's fetch section): a --contact alone goes beside its token."""
    out = given(read_timeout=args.timeout, max_per_host=args.max_per_host, min_host_delay=args.min_host_delay,
                tries=getattr(args, "tries", None))  # fmt: skip
    if args.allow_private is not None:
        out["allow_private"] = args.allow_private == []
        out["private_allowlist"] = tuple(args.allow_private)
    if args.optout_list is not None:
        out["optout"] = parse_optout_list(fsio.read_text(args.optout_list))
    if args.user_agent_token is not None or args.contact is not None:
        # --contact alone keeps the token from below: it only adds how to reach the operator.
        lower = below if isinstance(below, Mapping) else {}
        token = args.user_agent_token
        token = lower.get("user_agent_token", _FETCH.user_agent_token) if token is None else token
        out["user_agent_token"] = token
        out["user_agent"] = user_agent(token, args.contact)
    if args.ignore_robots:
        out["respect_robots"] = False
    return out
