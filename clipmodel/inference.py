"""A CLIP model ready for inference, from whatever a user points at: a training run, a checkpoint, released weights.

    loaded = load_model("runs/tiny")                       # a `wit train` run folder: its newest checkpoint
    loaded = load_model("runs/tiny/checkpoints/step-00000200.pt")
    loaded = load_model("ViT-B-32.safetensors")            # OpenAI-layout weights (open_clip's, converted releases)
    loaded = load_model("weights.pt", arch="RN50")         # a named or JSON architecture, when shapes are not enough

Everything loads with `weights_only=True` (clipmodel.checkpoint, clipmodel.train.checkpointing): a file that holds
code is refused, never run. The model comes back in eval mode on the requested device, in fp32; autocast is the
caller's.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from clipmodel.checkpoint import load_state_dict_file, read_plain, unwrap_state_dict
from clipmodel.factory import load_config
from clipmodel.model import CLIP, CLIPConfig, build_model
from clipmodel.train import checkpointing as ckpt


@dataclass(frozen=True)
class LoadedModel:
    model: CLIP
    config: CLIPConfig
    source: str  # the file the weights came from
    description: str  # one line for logs and output manifests: what and from where
    weights_sha256: str  # of the weights file, so outputs can say exactly which model made them

    @property
    def resolution(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when there is a GPU, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def inference_autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for inference: `auto` is bf16 on CUDA and fp32 elsewhere; or fp32 / bf16 / fp16."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _weights_file(spec: Path) -> Path:
    if spec.is_dir():
        latest = ckpt.latest_checkpoint(spec)
        if latest is None:
            raise FileNotFoundError(f"{spec}: a folder with no training checkpoints (expected {ckpt.CHECKPOINT_DIR}/)")
        return latest
    if not spec.is_file():
        raise FileNotFoundError(f"no model at {spec}: give a run folder, a checkpoint or a weights file")
    return spec


def load_model(
    spec: str | Path, arch: str | None = None, device: str | torch.device = "auto", activation: str = "quick_gelu"
) -> LoadedModel:
    """The model `spec` names (a run folder, a training checkpoint, or a state-dict file) in eval mode on `device`.

    A training checkpoint carries its architecture. For a bare state dict the architecture is `arch` (a named
    config or a JSON path) when given, else inferred from the weight shapes with `activation` (QuickGELU for
    OpenAI's releases). Raises FileNotFoundError or ValueError with one line that says what is wrong.
    """
    path = _weights_file(Path(spec))
    # One read: a pickle is either our training checkpoint or a state dict (possibly nested, as trainers save them).
    obj = load_state_dict_file(path) if path.suffix == ".safetensors" else read_plain(path, "checkpoint or weights")
    state = obj if ckpt.is_training_checkpoint(obj) else None
    if state is not None:
        config = CLIPConfig.from_dict(state["model_config"])
        if arch is not None and load_config(arch).to_dict() != config.to_dict():
            raise ValueError(f"{path} was trained as another architecture than {arch}")
        weights = state["model"]
        what = f"{state['config'].get('model', 'model')} trained {state.get('step', '?')} steps ({path})"
    else:
        weights = unwrap_state_dict(obj)
        config = load_config(arch) if arch is not None else None
        what = f"{arch or 'weights'} ({path})"
    try:
        model = build_model(weights, activation=activation, config=config)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the architecture: {first}") from None
    model = model.float().to(resolve_device(device))
    return LoadedModel(model, model.config, str(path), what, ckpt.file_sha256(str(path)))
