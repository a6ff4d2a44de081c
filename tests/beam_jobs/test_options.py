"""The fetch and politeness flags: their defaults live in the config dataclasses alone."""

import argparse

from beam_jobs import fetch as fetch_job
from beam_jobs.fetch_config import resolve
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig


def _parsed(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fetch_job.add_arguments(parser)
    return parser.parse_args(["--out", "x", *argv])


def test_unset_flags_take_the_dataclass_defaults_and_given_ones_win():
    defaults = FetchConfig()
    cfg = resolve(_parsed([])).fetch
    assert (cfg.read_timeout, cfg.max_per_host, cfg.min_host_delay, cfg.tries) == (
        defaults.read_timeout,
        defaults.max_per_host,
        defaults.min_host_delay,
        defaults.tries,
    )
    argv = ["--max-per-host", "3", "--timeout", "2.5", "--min-host-delay", "0.5", "--tries", "7"]
    cfg = resolve(_parsed(argv)).fetch
    assert (cfg.read_timeout, cfg.max_per_host, cfg.min_host_delay, cfg.tries) == (2.5, 3, 0.5, 7)
    assert resolve(_parsed([])).image == ImageConfig()


def test_the_help_shows_the_dataclass_defaults():
    parser = argparse.ArgumentParser()
    fetch_job.add_arguments(parser)
    text = parser.format_help()
    defaults, image = FetchConfig(), ImageConfig()
    for shown in (
        f"(default {defaults.max_per_host})",
        f"(default {defaults.read_timeout:g})",
        f"(default {defaults.tries})",
        f"default {image.image_size}",
        f"default {image.min_side}",
    ):
        assert shown in " ".join(text.split()), shown
