"""Gloo ranks for tests: run a rank's work, then leave without the interpreter's finalisation."""

import os
from collections.abc import Callable


def rank_then_leave(rank: int, work: Callable[..., None], *args: object) -> None:
    """`work(rank, *args)` (it writes its results and destroys its group), then exit at once: while the interpreter
    finalises, torch 2.13's gloo threads now and then abort the process ("terminate called without an active
    exception": about 1 run in 6 to 15 here, with a file or a TCP rendezvous alike), which would fail a test on
    nothing it checks. An exception in `work` still reaches the parent, as without this."""
    work(rank, *args)
    os._exit(0)
