"""The build job's configuration: defaults, then a YAML/JSON file, then the flags typed; errors name the setting."""

import argparse
import json

import pytest

from beam_jobs import fetch_config
from beam_jobs.build import add_arguments
from beam_jobs.build_config import SECTIONS, BuildConfig, resolve
from beam_jobs.fetch import add_arguments as add_fetch_job_arguments
from pipeline.settings import read_config_file
from pipeline.sources.url_lists import UrlListConfig


def _resolve(argv: list[str]):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    return resolve(parser.parse_args(argv))


def test_defaults_then_file_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "text:\n  min_words: 3\n  languages: [en, de]\ndedup:\n  by: pair\nrun:\n  samples_per_shard: 8\n"
        "fetch:\n  max_per_host: 4\n  disallowed_directives: [noai]\nbalance:\n  t: 50\n"
    )
    base = ["--candidates", "c.parquet", "--out", "o", "--config", str(tmp_path / "c.yaml")]
    cfg = _resolve(base)
    assert cfg.text.min_words == 3 and cfg.text.languages == ("en", "de") and cfg.dedup.by == "pair"
    assert cfg.run.samples_per_shard == 8 and cfg.fetch.max_per_host == 4 and cfg.balance.t == 50
    assert cfg.fetch.disallowed_directives == frozenset({"noai"})
    assert cfg.image.image_size == 256 and cfg.run.threads == 64  # untouched sections keep their defaults
    cfg = _resolve(base + ["--samples-per-shard", "16", "--languages", "fr", "--max-per-host", "2", "--no-balance"])
    assert cfg.run.samples_per_shard == 16 and cfg.text.languages == ("fr",) and cfg.fetch.max_per_host == 2
    assert cfg.run.balance is False and cfg.text.min_words == 3  # the file still fills what no flag named
    cfg = _resolve(base + ["--allow-private", "127.0.0.1", "--exclude-from", "a", "b", "--near-k", "6"])
    assert cfg.fetch.private_allowlist == ("127.0.0.1",) and not cfg.fetch.allow_private
    assert cfg.run.exclude_from == ("a", "b") and cfg.image_dedup.k == 6
    assert json.loads(json.dumps(cfg.to_dict()))["fetch"]["disallowed_directives"] == ["noai"]


def test_optout_list_is_read_as_by_wit_fetch(tmp_path):
    (tmp_path / "optout.txt").write_text("# asked not to be fetched\nexample.com\n\nhttps://photos.net/private/\n")
    argv = ["--candidates", "c.parquet", "--out", "o", "--optout-list", str(tmp_path / "optout.txt")]
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_fetch_job_arguments(parser)
    assert _resolve(argv).fetch.optout == fetch_config.resolve(parser.parse_args(argv)).fetch.optout
    assert _resolve(argv).fetch.optout == ("example.com", "https://photos.net/private/")


def test_config_errors_name_what_is_wrong(tmp_path):
    (tmp_path / "bad.yaml").write_text("texts:\n  min_words: 3\n")
    with pytest.raises(ValueError, match="unknown section"):
        read_config_file(tmp_path / "bad.yaml", SECTIONS)
    (tmp_path / "bad2.json").write_text(json.dumps({"text": {"min_wrds": 3}}))
    with pytest.raises(ValueError, match="min_wrds"):
        _resolve(["--candidates", "c", "--out", "o", "--config", str(tmp_path / "bad2.json")])
    (tmp_path / "bad3.json").write_text(json.dumps({"dedup": {"by": "everything"}}))
    with pytest.raises(ValueError, match="dedup"):
        _resolve(["--candidates", "c", "--out", "o", "--config", str(tmp_path / "bad3.json")])


def test_the_score_section_from_a_file_and_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("score:\n  model: a.pt\n  batch_size: 32\n  min_score: 0.2\n")
    base = ["--candidates", "c", "--out", "o", "--config", str(tmp_path / "c.yaml")]
    cfg = _resolve(base)
    assert (cfg.score.model, cfg.score.batch_size, cfg.score.min_score, cfg.score.arch) == ("a.pt", 32, 0.2, None)
    cfg = _resolve(base + ["--score-model", "b.pt", "--score-arch", "tiny", "--min-clip-score", "0.3"])
    assert (cfg.score.model, cfg.score.arch, cfg.score.min_score, cfg.score.batch_size) == ("b.pt", "tiny", 0.3, 32)
    assert cfg.to_dict()["score"]["model"] == "b.pt"
    assert _resolve(["--candidates", "c", "--out", "o"]).score.model is None  # off by default
    with pytest.raises(ValueError, match="needs a model"):
        _resolve(["--candidates", "c", "--out", "o", "--min-clip-score", "0.3"])


def test_every_setting_flag_defaults_to_none(flag_defaults):
    defaults = flag_defaults(add_arguments)
    assert {"no_balance", "threads", "image_workers", "format", "user_agent_token", "near_k"} <= set(defaults)
    # --no-progress is a switch of the terminal's display, not a setting of the build
    assert {dest: value for dest, value in defaults.items() if value is not None} == {"no_progress": False}


def test_nothing_given_is_the_dataclass_defaults():
    assert _resolve(["--candidates", "c", "--out", "o"]) == BuildConfig(UrlListConfig("c"))


def test_a_flag_left_out_keeps_the_files_value_and_a_flag_given_wins(tmp_path):
    (tmp_path / "c.yaml").write_text("run: {balance: false, threads: 3}\nfetch: {respect_robots: false}\n")
    base = ["--candidates", "c", "--out", "o", "--config", str(tmp_path / "c.yaml")]
    cfg = _resolve(base)
    assert (cfg.run.balance, cfg.run.threads, cfg.fetch.respect_robots) == (False, 3, False)
    (tmp_path / "c.yaml").write_text("run: {balance: true}\nimage_dedup: {max_aspect_change: null}\n")
    cfg = _resolve(base + ["--no-balance", "--ignore-robots"])
    assert (cfg.run.balance, cfg.fetch.respect_robots) == (False, False)
    assert cfg.image_dedup.max_aspect_change is None  # a file's null turns the veto off
