"""`wit crawl`'s configuration: CrawlConfig and FetchConfig defaults < --config file < the flags given."""

import argparse

import pytest

from beam_jobs import crawl
from pipeline.fetch.http import FetchConfig
from pipeline.sources.crawl import CrawlConfig


def _resolve(argv: list[str]) -> tuple[CrawlConfig, FetchConfig]:
    parser = argparse.ArgumentParser()
    crawl.add_arguments(parser)
    return crawl.resolve(parser.parse_args(["--seeds", "s.txt", "--out", "o", *argv]))


def test_every_setting_flag_defaults_to_none(flag_defaults) -> None:
    defaults = flag_defaults(crawl.add_arguments)
    assert {"depth", "threads", "allowed_domain", "max_per_host", "ignore_robots"} <= set(defaults)
    assert {dest: value for dest, value in defaults.items() if value is not None} == {}


def test_nothing_given_is_the_dataclass_defaults() -> None:
    assert _resolve([]) == (CrawlConfig(), FetchConfig())


def test_the_config_file_then_the_flags(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text(
        "crawl: {depth: 5, threads: 4, allowed_domains: [a.org]}\nfetch: {max_per_host: 3, connect_timeout: 2}\n"
    )
    base = ["--config", str(tmp_path / "c.yaml")]
    crawl_cfg, fetch_cfg = _resolve(base)
    assert crawl_cfg == CrawlConfig(depth=5, allowed_domains=("a.org",), threads=4)
    assert (fetch_cfg.max_per_host, fetch_cfg.connect_timeout) == (3, 2)
    flags = ["--depth", "0", "--allowed-domain", "b.org", "--allowed-domain", "c.org", "--max-per-host", "1"]
    crawl_cfg, fetch_cfg = _resolve(base + flags + ["--ignore-robots"])
    assert crawl_cfg == CrawlConfig(depth=0, allowed_domains=("b.org", "c.org"), threads=4)
    assert (fetch_cfg.max_per_host, fetch_cfg.connect_timeout, fetch_cfg.respect_robots) == (1, 2, False)


def test_bad_settings_say_where(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("run: {threads: 4}\n")
    with pytest.raises(ValueError, match="unknown section"):
        _resolve(["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(ValueError, match="config section 'crawl'"):
        _resolve(["--depth", "-1"])
