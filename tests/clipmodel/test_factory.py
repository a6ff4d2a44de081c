"""Named configs: listing, names and aliases, JSON round trips, exact parameter counts, packaging."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from clipmodel.factory import canonical_name, count_parameters, create_model, list_models, load_config
from clipmodel.model import CLIPConfig

ROOT = Path(__file__).resolve().parents[2]

# The released checkpoints' parameter counts (also cross-checked against open_clip: benchmarks/openclip_parity.py).
RELEASED = {
    "RN50": 102_007_137,
    "RN101": 119_688_033,
    "RN50x4": 178_300_601,
    "RN50x16": 290_979_217,
    "RN50x64": 623_258_305,
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
    "ViT-L-14-336": 427_944_193,
}


def test_list_models_releases_first_then_cpu_models():
    assert list_models() == [*RELEASED, "tiny", "tiny-rn"]


@pytest.mark.parametrize("name", RELEASED)
def test_parameter_counts_equal_the_releases(name):
    assert count_parameters(name) == RELEASED[name]


def test_tiny_models_are_small_and_counted_alike_on_cpu():
    torch.manual_seed(0)
    for name in ("tiny", "tiny-rn"):
        model = create_model(name)
        assert model.training and next(model.parameters()).device.type == "cpu"
        assert count_parameters(model) == count_parameters(name) < 10_000_000
        assert load_config(name).vision.image_size == 64


@pytest.mark.parametrize(
    ("alias", "stem"),
    [("ViT-B/32", "ViT-B-32"), ("ViT-L/14@336px", "ViT-L-14-336"), ("vit-l-14", "ViT-L-14"), ("rn50x4", "RN50x4")],
)
def test_release_names_and_case_are_accepted(alias, stem):
    assert canonical_name(alias) == stem
    assert load_config(alias) == load_config(stem)


def test_named_configs_have_the_release_shapes():
    rn50x64, vit_l = load_config("RN50x64"), load_config("ViT-L/14@336px")
    assert (rn50x64.vision.layers, rn50x64.vision.width, rn50x64.vision.image_size) == ((3, 15, 36, 10), 128, 448)
    assert (rn50x64.vision.heads, rn50x64.text.heads, rn50x64.embed_dim) == (64, 16, 1024)
    assert (vit_l.vision.layers, vit_l.vision.width, vit_l.vision.patch_size, vit_l.vision.heads) == (24, 1024, 14, 16)
    assert (vit_l.text.width, vit_l.text.context_length, vit_l.text.vocab_size) == (768, 77, 49408)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'ViT-H/14'; known: RN50, RN101"):
        load_config("ViT-H/14")


@pytest.mark.parametrize("name", list_models())
def test_json_files_round_trip_through_the_dataclasses(name):
    path = ROOT / "clipmodel" / "model_configs" / f"{name}.json"
    raw = json.loads(path.read_text())
    cfg = load_config(name)
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    assert {k: v for k, v in cfg.to_dict()["vision"].items() if k in raw["vision"]} == raw["vision"]
    assert load_config(path) == cfg  # a path works wherever a name does


def test_model_configs_ship_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["clipmodel"]
    assert "model_configs/*.json" in data and "*.txt.gz" in data
