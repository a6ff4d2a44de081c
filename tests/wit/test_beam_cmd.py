"""wit.beam_cmd: every command that runs a Beam job is one helper's, with the job's own --help and the top help line."""

import pytest

from wit import beam_cmd, cli

JOBS = {
    "crawl": "beam_jobs.crawl",
    "extract": "beam_jobs.extract",
    "fetch": "beam_jobs.fetch",
    "build": "beam_jobs.build",
    "filter": "beam_jobs.filter",
    "stats": "beam_jobs.stats",
}


def test_every_beam_job_command_runs_its_job_through_the_helper():
    parser = cli.build_parser()
    for name, module in JOBS.items():
        args, extra = parser.parse_known_args([name, "--runner=FnApiRunner"])
        assert (args.func, args.beam_job, args.beam_args) == (beam_cmd._run_job, module, True)
        assert extra == ["--runner=FnApiRunner"]  # left for the job (and Beam) to parse


def test_the_top_help_lists_each_job_with_its_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "curate, balance, fetch and deduplicate candidates into a dataset (--candidates PATH --out DATASET)" in out
    assert "(DATASET --embeddings EMB --out DATASET2)" in out
    assert "(DATASET|RUN_DIR [--compare OTHER] --out REPORT_DIR)" in out


@pytest.mark.parametrize("name", ["build", "stats"])  # crawl, extract, fetch: test_sources_cmd; filter: test_filter_cmd
def test_help_is_the_jobs_own(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0 and f"usage: wit {name}" in capsys.readouterr().out
