"""`wit web generate` and `wit web serve`, as a user runs them."""

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from synthweb import load_truth
from wit.cli import main


def test_generate_writes_a_web(tmp_path, capsys):
    out = tmp_path / "web"
    rc = main(["web", "generate", "--out", str(out), "--seed", "3", "--pages", "3", "--hosts", "2"])
    assert rc == 0
    assert "2 hosts" in capsys.readouterr().out
    assert {"site.json", "truth.parquet", "classes.json", "eval", "eval_shift", "hosts"} <= {
        p.name for p in out.iterdir()
    }
    assert {r["host"] for r in load_truth(out)} == {0, 1}


@pytest.mark.parametrize(
    "argv",
    [["--pages", "0"], ["--hosts", "20"], ["--images-per-page", "-1"]],
)
def test_generate_refuses_bad_numbers(tmp_path, capsys, argv):
    assert main(["web", "generate", "--out", str(tmp_path / "web"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wit web: error:") and len(err.strip().splitlines()) == 1


def test_generate_will_not_overwrite_a_folder_that_is_not_a_web(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["web", "generate", "--out", str(tmp_path), "--pages", "3"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "notes.txt").exists()


def test_serve_refuses_bad_input(web_dir, tmp_path, capsys):
    assert main(["web", "serve", str(tmp_path)]) == 2
    assert "no synthetic web" in capsys.readouterr().err
    assert main(["web", "serve", str(web_dir), "--ports", "80,x"]) == 2
    assert main(["web", "serve", str(web_dir), "--ports", "1"]) == 2
    assert main(["web", "serve", str(web_dir), "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def _serve(web_dir: Path, state_dir: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start `wit web serve` and read its banner up to the Ctrl-C line: (process, base URLs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wit.cli", "web", "serve", str(web_dir), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("press Ctrl-C"):
            break
    return proc, [line.split(": ", 1)[1] for line in lines if line.startswith("host ")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_until_interrupted(web_dir, tmp_path, sig):
    proc, base_urls = _serve(web_dir, tmp_path)
    try:
        assert len(base_urls) == 3 and all(u.startswith("http://127.0.0.1:") for u in base_urls)
        seeds = (tmp_path / "seeds.txt").read_text().split()
        assert seeds == base_urls
        with urllib.request.urlopen(seeds[1], timeout=5) as resp:
            assert resp.status == 200 and b"<html" in resp.read()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
