"""The commands that run a Beam job: the job's own parser reads the arguments (and `--help`), Beam reads the rest.

The job is imported only when its command runs, so `wit --help` pays for importing neither Beam nor torch.
"""

import argparse
import importlib


def add_job_command(subparsers: argparse._SubParsersAction, name: str, module: str, help_text: str) -> None:
    """`wit NAME ARGS...` runs `module.run(ARGS)`; bad input raising FileNotFoundError or ValueError becomes
    main's one-line error."""
    p = subparsers.add_parser(name, help=help_text, add_help=False)  # the job's parser answers --help
    p.set_defaults(func=_run_job, beam_job=module, beam_args=True)


def _run_job(args: argparse.Namespace) -> int:
    importlib.import_module(args.beam_job).run(args.argv)
    return 0
