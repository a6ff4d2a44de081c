"""Config layering: dataclass defaults < each layer in order; files read from any filesystem; errors say where."""

import json
from dataclasses import dataclass, field

import pytest
from memfs import clear

from pipeline import fsio
from pipeline.settings import given, layered, read_config_file, section


@dataclass(frozen=True)
class _Config:
    size: int = 8
    mode: str = "fast"
    names: tuple[str, ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)
    cutoff: float | None = 0.5  # None turns it off

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")


def test_later_layers_win_and_unnamed_settings_keep_their_defaults() -> None:
    assert layered(_Config, where="w") == _Config()
    cfg = layered(_Config, {"size": 2, "mode": "slow"}, None, {"size": 3}, where="w")
    assert cfg == _Config(size=3, mode="slow")


def test_given_drops_the_flags_left_out_so_they_do_not_override_a_layer_below() -> None:
    assert given(size=None, mode="slow", names=()) == {"mode": "slow", "names": ()}
    file = {"size": 4, "mode": "fast"}
    assert layered(_Config, file, given(size=None, mode="slow"), where="w") == _Config(size=4, mode="slow")


def test_an_explicit_null_in_a_file_is_a_value() -> None:
    assert layered(_Config, {"cutoff": None}, given(cutoff=None), where="w").cutoff is None


def test_lists_become_tuples_or_frozensets_as_annotated() -> None:
    cfg = section(_Config, {"names": ["a", "b"], "tags": ["x", "x", "y"]}, "w")
    assert cfg.names == ("a", "b") and cfg.tags == frozenset({"x", "y"})


def test_errors_name_where_and_what() -> None:
    with pytest.raises(ValueError, match=r"config section 'run': unknown setting\(s\) \['sise'\]"):
        layered(_Config, {"sise": 3}, where="config section 'run'")
    with pytest.raises(ValueError, match="config section 'run': size must be positive"):
        layered(_Config, {"size": 0}, where="config section 'run'")
    with pytest.raises(ValueError, match="config section 'run': expected a mapping of settings, got list"):
        layered(_Config, ["size"], where="config section 'run'")


def test_config_files_yaml_json_and_on_other_filesystems(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("run:\n  size: 3\n  names: [a]\n")
    assert read_config_file(tmp_path / "c.yaml", ["run", "fetch"]) == {"run": {"size": 3, "names": ["a"]}}
    (tmp_path / "c.json").write_text(json.dumps({"fetch": {"mode": "slow"}}))
    assert read_config_file(str(tmp_path / "c.json"), ["run", "fetch"]) == {"fetch": {"mode": "slow"}}
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml", ["run"]) == {}
    try:
        with fsio.atomic_write("memfs://settings/c.yaml") as f:
            f.write(b"run: {size: 5}\n")
        assert read_config_file("memfs://settings/c.yaml", ["run"]) == {"run": {"size": 5}}
    finally:
        clear("memfs://settings")


def test_config_file_errors(tmp_path) -> None:
    (tmp_path / "typo.yaml").write_text("runn:\n  size: 3\n")
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['runn'\]; known: \['run'\]"):
        read_config_file(tmp_path / "typo.yaml", ["run"])
    (tmp_path / "list.yaml").write_text("- run\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        read_config_file(tmp_path / "list.yaml", ["run"])
