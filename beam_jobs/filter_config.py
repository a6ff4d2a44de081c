"""The filter job's configuration: one frozen section per filter, from defaults, then a YAML/JSON file, then flags."""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from beam_jobs.build_config import read_config_file, section
from pipeline.filter.clip_score import ClipScoreConfig
from pipeline.filter.references import ConceptConfig, DecontaminateConfig, read_prompts
from pipeline.filter.semdedup import SemDedupConfig


@dataclass(frozen=True)
class RunConfig:
    """How the job runs, as opposed to how each filter judges."""

    samples_per_shard: int = 10_000
    model: str | None = None  # encodes concept prompts and eval images: the model that made the embeddings
    arch: str | None = None  # its architecture, for a bare weights file
    device: str = "auto"  # where that model runs (only in the launching process)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {self.samples_per_shard}")


@dataclass(frozen=True)
class FilterConfig:
    """The filters apply in the order of these fields: decontaminate, concepts, clip_score, semdedup (None: off)."""

    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    semdedup: SemDedupConfig | None = None
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """JSON-ready, as written into the output manifest."""
        return json.loads(json.dumps(dataclasses.asdict(self), sort_keys=True))


SECTIONS: dict[str, type] = {
    "decontaminate": DecontaminateConfig,
    "concepts": ConceptConfig,
    "clip_score": ClipScoreConfig,
    "semdedup": SemDedupConfig,
    "run": RunConfig,
}


def _flag_overrides(args: argparse.Namespace, typed: set[str]) -> dict[str, dict]:
    """Flags the user typed, as {section: {setting: value}}."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}

    def put(dest: str, section: str, name: str, value: Any = None) -> None:
        if dest in typed:
            out[section][name] = getattr(args, dest) if value is None else value

    # A CLIP-score flag replaces the file's CLIP-score setting whichever it was (the two exclude each other).
    if "min_clip_score" in typed:
        out["clip_score"] = {"min_score": args.min_clip_score, "top_fraction": None}
    if "top_fraction" in typed:
        out["clip_score"] = {"min_score": None, "top_fraction": args.top_fraction}
    put("semdedup_eps", "semdedup", "eps")
    put("clusters", "semdedup", "clusters")
    put("seed", "semdedup", "seed")
    if "concepts" in typed:  # the prompts themselves go into the config, so the manifest says what was avoided
        out["concepts"]["prompts"] = read_prompts(args.concepts)
    put("concept_threshold", "concepts", "threshold")
    put("decontaminate", "decontaminate", "path", str(args.decontaminate))
    put("eval_threshold", "decontaminate", "threshold")
    for dest in ("samples_per_shard", "model", "arch", "device"):
        put(dest, "run", dest)
    return out


def resolve(args: argparse.Namespace, typed: set[str]) -> FilterConfig:
    """Defaults, then the --config file's sections, then the flags typed: the resolved config, validated.

    Semantic dedup is on when the file has a `semdedup` section or a semdedup flag is given.
    """
    file_sections = read_config_file(args.config, SECTIONS) if args.config else {}
    flags = _flag_overrides(args, typed)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        in_file = file_sections.get(name)
        if in_file is not None and not isinstance(in_file, dict):
            raise ValueError(f"config section {name!r}: expected a mapping, got {type(in_file).__name__}")
        if name == "semdedup" and in_file is None and not flags[name]:
            sections[name] = None
            continue
        sections[name] = section(cls, dict(in_file or {}) | flags[name], f"config section {name!r}")
    return FilterConfig(**sections)
