"""The filter job's configuration: one frozen section per filter, from defaults, then a YAML/JSON file, then flags."""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.filter.clip_score import ClipScoreConfig
from pipeline.filter.references import ConceptConfig, DecontaminateConfig, read_prompts
from pipeline.filter.semdedup import SemDedupConfig
from pipeline.settings import given, layered, read_config_file


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


def _flag_overrides(args: argparse.Namespace) -> dict[str, dict]:
    """The settings the flags give (a flag left out is None), as {section: {setting: value}}."""
    # A CLIP-score flag replaces the file's CLIP-score setting whichever it was (the two exclude each other): the
    # other one is set to None explicitly, not left out.
    clip_score = {}
    if args.min_clip_score is not None:
        clip_score = {"min_score": args.min_clip_score, "top_fraction": None}
    if args.top_fraction is not None:
        clip_score = {"min_score": None, "top_fraction": args.top_fraction}
    # The prompts themselves go into the config, so the manifest says what was avoided.
    prompts = None if args.concepts is None else read_prompts(args.concepts)
    return {
        "decontaminate": given(path=args.decontaminate, threshold=args.eval_threshold),
        "concepts": given(prompts=prompts, threshold=args.concept_threshold),
        "clip_score": clip_score,
        "semdedup": given(eps=args.semdedup_eps, clusters=args.clusters, seed=args.seed),
        "run": given(samples_per_shard=args.samples_per_shard, model=args.model, arch=args.arch, device=args.device),
    }


def resolve(args: argparse.Namespace) -> FilterConfig:
    """Defaults, then the --config file's sections, then the flags given: the resolved config, validated.

    Semantic dedup is on when the file has a `semdedup` section or a semdedup flag is given.
    """
    file_sections = read_config_file(args.config, SECTIONS) if args.config else {}
    flags = _flag_overrides(args)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        in_file = file_sections.get(name)
        if name == "semdedup" and in_file is None and not flags[name]:
            sections[name] = None
            continue
        sections[name] = layered(cls, in_file, flags[name], where=f"config section {name!r}")
    return FilterConfig(**sections)
