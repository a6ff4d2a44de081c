"""Config layering for every job: a frozen dataclass's defaults, then a YAML/JSON file's section, then flags given."""

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline import fsio

T = TypeVar("T")


def given(**values: Any) -> dict[str, Any]:
    """The settings a user gave: flags default to None, so a None is a flag left out and is dropped.

    Only flags go through here: in a config file an explicit null is a value (it turns off an image-dedup veto)."""
    return {k: v for k, v in values.items() if v is not None}


def read_config_file(path: str | Path, sections: Iterable[str]) -> dict[str, Any]:
    """Sections from a YAML or JSON file (JSON is YAML), local or on any fsio filesystem (gs://, s3://...).

    Unknown sections are an error, not silently ignored: a misspelt section would otherwise leave its defaults."""
    sections = list(sections)
    data = yaml.safe_load(fsio.read_text(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections ({', '.join(sections)})")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {sections}")
    return data


def section(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """An instance of the frozen dataclass `cls` from a mapping; lists (YAML has no tuples) become frozensets or
    tuples as the field is annotated. Unknown names and values `cls` refuses are ValueErrors naming `where`."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    typed = {}
    for name, value in values.items():
        if isinstance(value, list):
            value = frozenset(value) if "frozenset" in str(names[name].type) else tuple(value)
        typed[name] = value
    try:
        return cls(**typed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def layered(cls: type[T], *layers: Mapping[str, Any] | None, where: str) -> T:
    """`cls` from its defaults, then each layer's settings in order, a later layer winning; a None layer (a file
    without this section) adds nothing. Flag layers hold only what was given (see `given`)."""
    values: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ValueError(f"{where}: expected a mapping of settings, got {type(layer).__name__}")
        values.update(layer)
    return section(cls, values, where)
