"""Named CLIP architectures: list them, load their configs (small JSON files), build and size models.

Names are the JSON file stems in `model_configs/` (`ViT-B-32`), and the release's spelling is accepted too
(`ViT-B/32`, `ViT-L/14@336px`). A path to a JSON file of the same shape works wherever a name does.
"""

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
from torch import nn

from clipmodel.model import CLIP, CLIPConfig, TextConfig, VisionConfig

__all__ = [
    "CLIPConfig",
    "TextConfig",
    "VisionConfig",
    "canonical_name",
    "count_parameters",
    "create_model",
    "list_models",
    "load_config",
]


def _config_files() -> dict[str, Traversable]:
    # Package data, so the configs ship inside an installed wheel as well as a checkout.
    files = (resources.files("clipmodel") / "model_configs").iterdir()
    return {f.name.removesuffix(".json"): f for f in files if f.name.endswith(".json")}


def _sort_key(name: str) -> tuple[int, str]:
    # OpenAI's releases first in their publication order, small CPU models after.
    order = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]
    return (order.index(name) if name in order else len(order), name)


def list_models() -> list[str]:
    """Every named configuration, by file stem."""
    return sorted(_config_files(), key=_sort_key)


def canonical_name(name: str) -> str:
    """`ViT-B/32` -> `ViT-B-32`, `ViT-L/14@336px` -> `ViT-L-14-336`, `vit-b-32` -> `ViT-B-32`."""
    stem = name.replace("/", "-").replace("@", "-").removesuffix("px")
    by_lower = {known.lower(): known for known in _config_files()}
    return by_lower.get(stem.lower(), stem)


def load_config(name_or_path: str | Path) -> CLIPConfig:
    """The config of a named model, or of a JSON file given by path. Unknown names list the known ones."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return CLIPConfig.from_dict(json.loads(path.read_text()))
    files = _config_files()
    stem = canonical_name(str(name_or_path))
    if stem not in files:
        raise ValueError(f"unknown model {str(name_or_path)!r}; known: {', '.join(list_models())}")
    return CLIPConfig.from_dict(json.loads(files[stem].read_text()))


def create_model(name_or_config: str | Path | CLIPConfig, device: str | torch.device | None = None) -> CLIP:
    """A freshly initialised CLIP (train mode) of a named config, a JSON path, or a CLIPConfig."""
    cfg = name_or_config if isinstance(name_or_config, CLIPConfig) else load_config(name_or_config)
    with torch.device(device or "cpu"):
        return CLIP(cfg)


def count_parameters(model_or_config: nn.Module | CLIPConfig | str) -> int:
    """Trainable-parameter count (BatchNorm statistics are buffers, not counted), as the release reports it.

    Given a config or a name, the model is built on the meta device: shapes only, no memory, milliseconds.
    """
    if isinstance(model_or_config, nn.Module):
        return sum(p.numel() for p in model_or_config.parameters())
    return count_parameters(create_model(model_or_config, device="meta"))
