"""The fetch job's configuration: sources, fetch, image and run sections, from defaults, a YAML/JSON file, flags."""

import argparse
from dataclasses import dataclass
from typing import Any

from beam_jobs.options import fetch_flags
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig
from pipeline.settings import given, layered, read_config_file
from pipeline.sources.url_lists import UrlListConfig

SECTIONS = ("sources", "fetch", "image", "run")
# What a retry takes from the dataset it retries unless given: new samples must match the old ones.
_RETRIED_IMAGE = ("image_size", "resize_mode", "min_side")


@dataclass(frozen=True)
class RunConfig:
    """How a fetch runs: shard size and the work in flight per worker (`wit build`'s run section extends it)."""

    samples_per_shard: int = 10_000
    threads: int = 64  # requests in flight per worker
    image_workers: int = 0  # processes per worker that decode and resize; 0: in the fetching threads

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1 or self.threads < 1 or self.image_workers < 0:
            raise ValueError("samples_per_shard and threads must be at least 1, image_workers at least 0")


@dataclass(frozen=True)
class FetchJobConfig:
    sources: UrlListConfig | None  # None: a retry, whose candidates are its dataset's transient failures
    fetch: FetchConfig
    image: ImageConfig
    run: RunConfig


def source_flags(args: argparse.Namespace) -> dict[str, Any]:
    return given(format=args.format, url_col=args.url_col, caption_col=args.caption_col)


def image_flags(args: argparse.Namespace) -> dict[str, Any]:
    return given(image_size=args.image_size, resize_mode=args.resize_mode, min_side=args.min_image_side)


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    return given(samples_per_shard=args.samples_per_shard, threads=args.threads, image_workers=args.image_workers)


def resolve(args: argparse.Namespace, earlier: dict | None = None) -> FetchJobConfig:
    """Defaults, then (for a retry) the retried dataset's image settings and shard size from its manifest config
    `earlier`, then the --config file's sections, then the flags given: the resolved config, validated."""
    file = read_config_file(args.config, SECTIONS) if args.config else {}
    earlier = earlier or {}
    retried_image = {k: v for k, v in (earlier.get("image") or {}).items() if k in _RETRIED_IMAGE}
    retried_run = given(samples_per_shard=earlier.get("samples_per_shard"))

    def resolved(name: str, cls: type, flags: dict, below: dict | None = None) -> Any:
        return layered(cls, below, file.get(name), flags, where=f"config section {name!r}")

    sources = None  # a retry: the sources are the retried dataset's, recorded in its manifest
    if args.candidates:
        sources = resolved("sources", UrlListConfig, source_flags(args) | {"pattern": args.candidates})
    return FetchJobConfig(
        sources=sources,
        fetch=resolved("fetch", FetchConfig, fetch_flags(args, file.get("fetch"))),
        image=resolved("image", ImageConfig, image_flags(args), below=retried_image),
        run=resolved("run", RunConfig, run_flags(args), below=retried_run),
    )
