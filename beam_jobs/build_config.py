"""The build job's configuration: one frozen section per stage, from defaults, then a YAML/JSON file, then flags."""

import argparse
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import fsio
from pipeline.curate.balance import BalanceConfig
from pipeline.curate.dedup import DedupConfig
from pipeline.curate.image_dedup import ImageDedupConfig
from pipeline.curate.text import TextConfig
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig
from pipeline.fetch.politeness import parse_optout_list, user_agent
from pipeline.sources.url_lists import UrlListConfig


@dataclass(frozen=True)
class RunConfig:
    """How the build runs and what it compares against, as opposed to how each stage judges."""

    samples_per_shard: int = 10_000
    threads: int = 64
    image_workers: int = 0
    exclude_from: tuple[str, ...] = ()  # earlier datasets: their URLs and images are not taken again
    decontaminate: str | None = None  # a folder of evaluation images whose near-copies are dropped
    blocklist: str | None = None  # a file of sha256 / perceptual-hash values never to write
    balance: bool = True  # WIT-style query balancing (off: every curated candidate is fetched)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1 or self.threads < 1 or self.image_workers < 0:
            raise ValueError("samples_per_shard and threads must be at least 1, image_workers at least 0")


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


def section(cls: type, values: dict, where: str) -> Any:
    """A section's dataclass from a mapping; lists become frozensets or tuples as the field is annotated."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    typed = {}
    for name, value in values.items():
        if isinstance(value, list):
            kind = names[name].type
            value = frozenset(value) if "frozenset" in str(kind) else tuple(value)
        typed[name] = value
    try:
        return cls(**typed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def read_config_file(path: str | Path, sections: Iterable[str] = SECTIONS) -> dict:
    """Sections from a YAML or JSON file (JSON is YAML); unknown sections are an error, not silently ignored."""
    sections = list(sections)
    data = yaml.safe_load(fsio.read_text(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections ({', '.join(sections)})")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {sections}")
    return data


def given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags actually typed (so a flag left at its default does not override the file)."""
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {a.dest for a in parser._actions if typed & set(a.option_strings)}


def _flag_overrides(args: argparse.Namespace, typed: set[str]) -> dict[str, dict]:
    """Flags the user typed, as {section: {setting: value}}."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}

    def put(dest: str, section: str, name: str, value: Any = None) -> None:
        if dest in typed:
            out[section][name] = getattr(args, dest) if value is None else value

    put("format", "sources", "format")
    put("url_col", "sources", "url_col")
    put("caption_col", "sources", "caption_col")
    put("languages", "text", "languages", tuple(x for x in (args.languages or "").split(",") if x))
    put("lang_model", "text", "lang_model")
    put("min_words", "text", "min_words")
    put("dedup", "dedup", "by")
    put("t", "balance", "t")
    put("metadata", "balance", "metadata_path", str(args.metadata))
    put("near_k", "image_dedup", "k")
    put("score_model", "score", "model")
    put("score_arch", "score", "arch")
    put("min_clip_score", "score", "min_score")
    for dest, name in (("image_size", "image_size"), ("resize_mode", "resize_mode"), ("min_image_side", "min_side")):
        put(dest, "image", name)
    for dest in ("samples_per_shard", "threads", "image_workers", "decontaminate", "blocklist"):
        put(dest, "run", dest)
    put("exclude_from", "run", "exclude_from", tuple(args.exclude_from or ()))
    put("no_balance", "run", "balance", False)
    _fetch_overrides(args, typed, out["fetch"])
    return out


def _fetch_overrides(args: argparse.Namespace, typed: set[str], out: dict) -> None:
    if "allow_private" in typed:
        out["allow_private"] = args.allow_private == []
        out["private_allowlist"] = tuple(args.allow_private or ())
    if "optout_list" in typed:
        out["optout"] = parse_optout_list(fsio.read_text(args.optout_list))
    if typed & {"user_agent_token", "contact"}:
        out["user_agent_token"] = args.user_agent_token
        out["user_agent"] = user_agent(args.user_agent_token, args.contact)
    for dest, name in (("max_per_host", "max_per_host"), ("min_host_delay", "min_host_delay"), ("tries", "tries")):
        if dest in typed:
            out[name] = getattr(args, dest)
    if "timeout" in typed:
        out["read_timeout"] = args.timeout
    if "ignore_robots" in typed:
        out["respect_robots"] = False


def resolve(args: argparse.Namespace, typed: set[str]) -> BuildConfig:
    """Defaults, then the --config file's sections, then the flags typed: the resolved config, validated."""
    file_sections = read_config_file(args.config) if args.config else {}
    flags = _flag_overrides(args, typed)
    sections = {}
    for name, cls in SECTIONS.items():
        values = dict(file_sections.get(name) or {}) | flags[name]
        if name == "sources":
            values["pattern"] = args.candidates
        sections[name] = section(cls, values, f"config section {name!r}")
    return BuildConfig(**sections)
