"""The build job's configuration: one frozen section per stage, from defaults, then a YAML/JSON file, then flags."""

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from beam_jobs.fetch_config import RunConfig as FetchRunConfig
from beam_jobs.fetch_config import image_flags, run_flags, source_flags
from beam_jobs.options import fetch_flags
from pipeline.curate.balance import BalanceConfig
from pipeline.curate.dedup import DedupConfig
from pipeline.curate.image_dedup import ImageDedupConfig
from pipeline.curate.text import TextConfig
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig
from pipeline.settings import given, layered, read_config_file
from pipeline.sources.url_lists import UrlListConfig


@dataclass(frozen=True)
class RunConfig(FetchRunConfig):
    """How the build runs (as `wit fetch`: shard size, work in flight) and what it compares against, as opposed to
    how each stage judges."""

    exclude_from: tuple[str, ...] = ()  # earlier datasets: their URLs and images are not taken again
    decontaminate: str | None = None  # a folder of evaluation images whose near-copies are dropped
    blocklist: str | None = None  # a file of sha256 / perceptual-hash values never to write
    balance: bool = True  # WIT-style query balancing (off: every curated candidate is fetched)


@dataclass(frozen=True)
class ScoreConfig:
    """CLIP scoring inside the build (pipeline.inference.ScoreSamples), after image dedup; off without a model."""

    model: str | None = None  # a run folder, training checkpoint or weights file
    arch: str | None = None  # architecture of a bare weights file (default: from its shapes)
    min_score: float | None = None  # reject image-caption cosine under this (None: only store the score)
    batch_size: int = 64  # samples per model call
    device: str = "auto"  # where workers run the model: auto (CUDA when there is one), cpu or cuda
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16

    def __post_init__(self) -> None:
        if self.min_score is not None and self.model is None:
            raise ValueError("min_score needs a model to score with (score.model, --score-model)")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score is a cosine, between -1 and 1; got {self.min_score}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda") or self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"device must be auto, cpu or cuda and precision auto, fp32, bf16 or fp16 ({self})")


@dataclass(frozen=True)
class BuildConfig:
    sources: UrlListConfig
    text: TextConfig = field(default_factory=TextConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    image_dedup: ImageDedupConfig = field(default_factory=ImageDedupConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """JSON-ready, as written into the manifest (sets become sorted lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable, sort_keys=True))


SECTIONS = {f.name: f.type for f in dataclasses.fields(BuildConfig)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"not JSON-serializable: {value!r}")


def _flag_overrides(args: argparse.Namespace, file_fetch: Mapping | None) -> dict[str, dict]:
    """The settings the flags give (a flag left out is None), as {section: {setting: value}}."""
    languages = None if args.languages is None else tuple(x for x in args.languages.split(",") if x)
    exclude_from = None if args.exclude_from is None else tuple(args.exclude_from)
    return {
        "sources": source_flags(args) | {"pattern": args.candidates},
        "text": given(languages=languages, lang_model=args.lang_model, min_words=args.min_words),
        "dedup": given(by=args.dedup),
        "balance": given(t=args.t, metadata_path=args.metadata),
        "fetch": fetch_flags(args, file_fetch),
        "image": image_flags(args),
        "image_dedup": given(k=args.near_k),
        "score": given(model=args.score_model, arch=args.score_arch, min_score=args.min_clip_score),
        "run": run_flags(args)
        | given(exclude_from=exclude_from, decontaminate=args.decontaminate, blocklist=args.blocklist)
        | ({"balance": False} if args.no_balance else {}),
    }


def resolve(args: argparse.Namespace) -> BuildConfig:
    """Defaults, then the --config file's sections, then the flags given: the resolved config, validated."""
    file_sections = read_config_file(args.config, SECTIONS) if args.config else {}
    flags = _flag_overrides(args, file_sections.get("fetch"))
    sections = {
        name: layered(cls, file_sections.get(name), flags[name], where=f"config section {name!r}")
        for name, cls in SECTIONS.items()
    }
    return BuildConfig(**sections)
