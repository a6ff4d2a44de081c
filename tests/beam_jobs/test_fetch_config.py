"""The fetch job's configuration: dataclass defaults < a retried dataset's < --config file < the flags given."""

import argparse
import dataclasses

import pytest

from beam_jobs import fetch as fetch_job
from beam_jobs.fetch_config import FetchJobConfig, RunConfig, resolve
from pipeline.fetch.http import FetchConfig
from pipeline.fetch.image import ImageConfig
from pipeline.fetch.politeness import user_agent
from pipeline.sources.url_lists import UrlListConfig

NOT_CONFIG = {"no_progress"}  # a switch of the terminal's display, not a setting of the job


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fetch_job.add_arguments(parser)
    return parser.parse_args(["--out", "x", *argv])


def test_every_setting_flag_defaults_to_none(flag_defaults) -> None:
    defaults = flag_defaults(fetch_job.add_arguments)
    assert {"threads", "image_workers", "samples_per_shard", "format", "user_agent_token", "ignore_robots"} <= set(
        defaults
    )
    assert {dest: value for dest, value in defaults.items() if dest not in NOT_CONFIG and value is not None} == {}


def test_nothing_given_is_the_dataclass_defaults() -> None:
    cfg = resolve(_parse(["--candidates", "c.parquet"]))
    assert cfg == FetchJobConfig(UrlListConfig("c.parquet"), FetchConfig(), ImageConfig(), RunConfig())
    assert resolve(_parse(["--retry-failed", "d"])).sources is None


def test_a_changed_dataclass_default_reaches_the_command(monkeypatch) -> None:
    changed = dataclasses.make_dataclass("RunConfig", [("threads", int, 7)], bases=(RunConfig,), frozen=True)
    monkeypatch.setattr("beam_jobs.fetch_config.RunConfig", changed)
    assert resolve(_parse(["--candidates", "c"])).run.threads == 7


def test_the_config_file_then_the_flags(tmp_path) -> None:
    (tmp_path / "f.yaml").write_text(
        "sources: {format: csv, url_col: URL}\nfetch: {max_per_host: 4, disallowed_directives: [noai], tries: 5}\n"
        "image: {image_size: 128, quality: 80}\nrun: {samples_per_shard: 100, threads: 8}\n"
    )
    base = ["--candidates", "c.txt", "--config", str(tmp_path / "f.yaml")]
    cfg = resolve(_parse(base))
    assert cfg.sources == UrlListConfig("c.txt", "csv", url_col="URL")
    assert (cfg.fetch.max_per_host, cfg.fetch.tries, cfg.fetch.disallowed_directives) == (4, 5, frozenset({"noai"}))
    assert (cfg.image.image_size, cfg.image.quality, cfg.image.resize_mode) == (128, 80, ImageConfig().resize_mode)
    assert cfg.run == RunConfig(samples_per_shard=100, threads=8)
    flags = ["--format", "tsv", "--max-per-host", "2", "--image-size", "64", "--threads", "3", "--image-workers", "2"]
    cfg = resolve(_parse(base + flags + ["--ignore-robots", "--allow-private", "127.0.0.1"]))
    assert (cfg.sources.format, cfg.sources.url_col) == ("tsv", "URL")  # the file fills what no flag named
    assert (cfg.fetch.max_per_host, cfg.fetch.tries, cfg.fetch.respect_robots) == (2, 5, False)
    assert cfg.fetch.private_allowlist == ("127.0.0.1",) and not cfg.fetch.allow_private
    assert (cfg.image.image_size, cfg.image.quality) == (64, 80)
    assert cfg.run == RunConfig(samples_per_shard=100, threads=3, image_workers=2)


def test_a_contact_goes_beside_the_token_of_the_file(tmp_path) -> None:
    (tmp_path / "f.yaml").write_text("fetch: {user_agent_token: mybot}\n")
    cfg = resolve(_parse(["--candidates", "c", "--config", str(tmp_path / "f.yaml"), "--contact", "mailto:a@b.c"]))
    assert (cfg.fetch.user_agent_token, cfg.fetch.user_agent) == ("mybot", user_agent("mybot", "mailto:a@b.c"))
    cfg = resolve(_parse(["--candidates", "c", "--user-agent-token", "other"]))
    assert (cfg.fetch.user_agent_token, cfg.fetch.user_agent) == ("other", user_agent("other"))


def test_a_retry_keeps_the_retried_datasets_image_settings_and_shard_size_unless_given(tmp_path) -> None:
    earlier = {
        "image": dataclasses.asdict(ImageConfig(image_size=64, resize_mode="border", min_side=8, quality=70)),
        "samples_per_shard": 5,
        "threads": 2,
    }
    cfg = resolve(_parse(["--retry-failed", "d"]), earlier)
    assert (cfg.image.image_size, cfg.image.resize_mode, cfg.image.min_side) == (64, "border", 8)
    assert cfg.image.quality == ImageConfig().quality  # only the settings a retry always kept are taken
    assert cfg.run == RunConfig(samples_per_shard=5)
    (tmp_path / "f.yaml").write_text("image: {min_side: 16}\nrun: {samples_per_shard: 50}\n")
    cfg = resolve(_parse(["--retry-failed", "d", "--config", str(tmp_path / "f.yaml"), "--image-size", "96"]), earlier)
    assert (cfg.image.image_size, cfg.image.resize_mode, cfg.image.min_side) == (96, "border", 16)
    assert cfg.run.samples_per_shard == 50


def test_bad_settings_say_where(tmp_path) -> None:
    (tmp_path / "f.yaml").write_text("crawl: {depth: 1}\n")
    with pytest.raises(ValueError, match="unknown section"):
        resolve(_parse(["--candidates", "c", "--config", str(tmp_path / "f.yaml")]))
    (tmp_path / "f.yaml").write_text("run: {threds: 1}\n")
    with pytest.raises(ValueError, match="config section 'run': unknown setting"):
        resolve(_parse(["--candidates", "c", "--config", str(tmp_path / "f.yaml")]))
    with pytest.raises(ValueError, match="config section 'run'"):
        resolve(_parse(["--candidates", "c", "--threads", "0"]))
