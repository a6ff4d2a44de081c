"""`wit model list` through the command line."""

import pytest

from wit.cli import main


def test_model_list(capsys):
    assert main(["model", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "image", "encoder", "resolution", "embed", "dim", "parameters"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows)[:3] == ["RN50", "RN101", "RN50x4"] and len(rows) == 11
    assert rows["RN50"].split()[-3:] == ["224px", "1024", "102.0M"]
    assert rows["ViT-L-14-336"].split()[-3:] == ["336px", "768", "427.9M"]
    assert "ViT 4x128 /8" in rows["tiny"] and rows["tiny"].split()[-3:] == ["64px", "128", "8.0M"]
    assert rows["tiny-rn"].startswith("tiny-rn") and "ResNet 1-1-1-1 w16" in rows["tiny-rn"]


def test_model_help_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["model", "--help"])
    assert e.value.code == 0
    assert main(["model"]) == 2
    assert "list" in capsys.readouterr().err
