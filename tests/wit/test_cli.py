"""The `wit` command line prints only its own words: no notice a library prints because it was imported."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from wit import cli  # noqa: F401 - importing it quiets the import noise, as at start-up

ROOT = Path(__file__).resolve().parents[2]


def test_import_noise_is_filtered_and_real_warnings_are_not(caplog):
    assert os.environ.get("NO_ALBUMENTATIONS_UPDATE") == "1"
    logging.warning("apitools not found, and bigquery client libraries are not available despite the import ...")
    logging.warning("a real warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_a_build_prints_nothing_but_its_summary(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the one candidate fails fast, as a connect_error
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "l.csv").write_text(f"url,caption\nhttp://127.0.0.1:{port}/x.jpg,a red circle on a white plate\n")
    argv = ["build", "--candidates", str(tmp_path / "l.csv"), "--out", str(tmp_path / "ds"), "--allow-private"]
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-m", "wit.cli", *argv, "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "connect_error 1" in done.stdout
    assert done.stderr == ""  # Beam's apitools notice and its warnings about our transforms' type hints are gone
