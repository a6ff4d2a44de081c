"""The filter job's configuration: defaults < --config file < flags, semantic dedup on only when asked."""

import argparse
from pathlib import Path

import pytest

from beam_jobs.filter import add_arguments
from beam_jobs.filter_config import FilterConfig, resolve
from pipeline.filter.clip_score import ClipScoreConfig
from pipeline.filter.semdedup import SemDedupConfig


def _resolve(argv: list[str]) -> FilterConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["DS", "--embeddings", "EMB", "--out", "OUT", *argv]
    return resolve(parser.parse_args(argv))


def test_defaults_filter_nothing() -> None:
    cfg = _resolve([])
    assert cfg == FilterConfig()
    assert cfg.semdedup is None and cfg.clip_score == ClipScoreConfig() and not cfg.concepts.prompts
    assert cfg.to_dict()["run"]["samples_per_shard"] == 10_000


def test_every_setting_flag_defaults_to_none(flag_defaults) -> None:
    defaults = flag_defaults(add_arguments)
    assert {"min_clip_score", "semdedup_eps", "concept_threshold", "samples_per_shard", "device"} <= set(defaults)
    assert {dest: value for dest, value in defaults.items() if value is not None} == {}


def test_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "filter.yaml"
    config.write_text(
        "clip_score: {min_score: 0.28}\nsemdedup: {eps: 0.1, clusters: 7}\n"
        "concepts: {prompts: [a gun, a logo], threshold: 0.25}\nrun: {samples_per_shard: 5}\n"
    )
    cfg = _resolve(["--config", str(config)])
    assert cfg.clip_score.min_score == 0.28 and cfg.semdedup == SemDedupConfig(eps=0.1, clusters=7)
    assert cfg.concepts.prompts == ("a gun", "a logo") and cfg.run.samples_per_shard == 5
    prompts = tmp_path / "p.txt"
    prompts.write_text("a flag\n")
    cfg = _resolve(["--config", str(config), "--top-fraction", "0.3", "--clusters", "9", "--concepts", str(prompts)])
    assert cfg.clip_score == ClipScoreConfig(top_fraction=0.3)  # the flag replaces the file's min_score
    assert cfg.semdedup == SemDedupConfig(eps=0.1, clusters=9) and cfg.concepts.prompts == ("a flag",)
    assert cfg.concepts.threshold == 0.25


def test_semdedup_turns_on_with_a_flag_or_a_section(tmp_path: Path) -> None:
    assert _resolve(["--semdedup-eps", "0.02"]).semdedup == SemDedupConfig(eps=0.02)
    config = tmp_path / "c.json"
    config.write_text('{"semdedup": {}}')
    assert _resolve(["--config", str(config)]).semdedup == SemDedupConfig()


def test_bad_settings_say_where(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dedup: {eps: 0.1}\n")
    with pytest.raises(ValueError, match="unknown section"):
        _resolve(["--config", str(config)])
    config.write_text("semdedup: {epsilon: 0.1}\n")
    with pytest.raises(ValueError, match="config section 'semdedup': unknown setting"):
        _resolve(["--config", str(config)])
    with pytest.raises(ValueError, match="top_fraction"):
        _resolve(["--top-fraction", "1.5"])
