"""Safe loading of CLIP weights: safetensors, or torch pickles restricted to tensors (never arbitrary code).

A pickle can run any code on load, and TorchScript archives (OpenAI's released `.pt` files) carry code that
`torch.jit.load` runs. So pickles load only under `weights_only=True`, TorchScript is refused, and the caller gets
a flat {name: tensor} dict with the usual training wrappers (`state_dict`, DDP's `module.`) removed.
"""

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch

# Where trainers commonly nest the weights inside a saved checkpoint dict.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes that wrappers add to every key: DistributedDataParallel, and torch.compile's OptimizedModule.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips holding compiled code (`code/`) and `constants.pkl` beside the data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The flat state dict inside a checkpoint object: nesting keys followed, wrapper prefixes stripped."""
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
            raise ValueError(f"not a state dict: entries {bad} are not tensors and none of {_NESTING_KEYS} is a dict")
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"not a state dict: a {type(obj).__name__}")
    sd = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _all_tensors(d: Mapping) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a torch pickle (`.pt`, `.pth`, `.bin`, ...) onto the CPU.

    Raises ValueError for a TorchScript archive or a pickle that holds anything but tensors and plain containers;
    nothing in the file is executed either way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path), device="cpu"))
    return unwrap_state_dict(read_plain(path, "state dict"))


def read_plain(path: str | Path, what: str = "state dict") -> Any:
    """torch.load of a pickle restricted to tensors and plain containers, onto the CPU; a TorchScript archive or a
    pickle that references anything else is refused with a ValueError naming it (`what`: the kind of file expected).
    """
    path = Path(path)
    if _is_torchscript(path):
        raise ValueError(
            f"{path} is a TorchScript archive (like OpenAI's released .pt files); loading it would run the code it "
            "carries, so it is refused. Convert it once where you trust it: "
            "torch.save(torch.jit.load(p, map_location='cpu').state_dict(), 'weights.pt')"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as e:
        # Name the offending global, and leave out torch's advice on allowlisting it: that is what not to do here.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what_ = f"it references {found.group(1)}" if found else str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: refused, not a plain {what} ({what_}; only tensors and containers load)") from e
