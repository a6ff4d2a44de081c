"""The CLIP model: config dataclasses, the vision (ViT or modified ResNet) and text transformers, `build_model`.

Module and parameter names and shapes follow OpenAI's released state dicts, so those load with strict=True.
Tensors are batch-first throughout, (B, L, D); attention goes through `F.scaled_dot_product_attention`.
No I/O here: `clipmodel.checkpoint` reads files, `clipmodel.factory` reads the named configs.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipmodel.resnet import ModifiedResNet

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class VisionConfig:
    """Image encoder: a ViT when `layers` is one int, the modified ResNet when it is four (blocks per stage)."""

    layers: int | tuple[int, int, int, int]
    width: int  # ViT: token width; ResNet: stem width (the last stage has 32x as many channels)
    image_size: int = 224
    patch_size: int | None = None  # ViT only
    head_width: int = 64  # the release uses 64-wide heads in every vision tower

    def __post_init__(self) -> None:
        if isinstance(self.layers, list | tuple):
            object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if self.is_vit:
            if not self.patch_size or self.image_size % self.patch_size:
                raise ValueError(f"ViT image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        else:
            if len(self.layers) != 4 or min(self.layers) < 1 or self.patch_size is not None:
                raise ValueError(f"ResNet needs four positive stage depths and no patch_size, got {self}")
            if self.image_size % 32:
                raise ValueError(f"ResNet image_size {self.image_size} must be a multiple of 32")
        if self.attention_width % self.head_width or self.heads < 1:
            raise ValueError(f"vision width {self.attention_width} is not a multiple of head_width {self.head_width}")

    @property
    def is_vit(self) -> bool:
        return isinstance(self.layers, int)

    @property
    def attention_width(self) -> int:
        """Width of the vision attention: the ViT's tokens, or the ResNet's last stage (attention pooling)."""
        return self.width if self.is_vit else self.width * 32

    @property
    def heads(self) -> int:
        return self.attention_width // self.head_width


@dataclass(frozen=True)
class TextConfig:
    """Text encoder: a causal transformer over BPE tokens, pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12

    def __post_init__(self) -> None:
        if self.width % self.heads or min(self.context_length, self.vocab_size, self.layers) < 1:
            raise ValueError(f"bad text config {self}: width must divide into heads, sizes must be positive")


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: both towers, the shared embedding width, and the MLP activation of the transformers."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig = field(default_factory=TextConfig)
    activation: str = "quick_gelu"  # OpenAI's checkpoints were trained with QuickGELU; "gelu" for new models

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
        unknown = set(d) - {"embed_dim", "vision", "text", "activation"}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        rest = {k: v for k, v in d.items() if k not in ("vision", "text")}
        return cls(vision=VisionConfig(**d["vision"]), text=TextConfig(**d.get("text", {})), **rest)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.vision.is_vit:
            d["vision"]["layers"] = list(self.vision.layers)
        return d


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32: fp16/bf16 variance loses too much precision; a float64 model keeps
    float64 (rounding it through float32 would silently cost the precision it was made double for)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        w = None if self.weight is None else self.weight.to(dtype)
        b = None if self.bias is None else self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), self.normalized_shape, w, b, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's models were trained with; swapping it in costs accuracy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, computed by fused SDPA kernels."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's own init, which the release keeps for the vision transformer.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, L, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))  # (B, L, D)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, activation: str):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _activation(activation))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)  # (B, L, D)
        return x + self.mlp(self.ln_2(x))  # (B, L, D)


class Transformer(nn.Module):
    """A stack of residual attention blocks; `causal` makes every position see only itself and earlier ones."""

    def __init__(self, width: int, layers: int, heads: int, activation: str, causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, activation) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=self.causal)  # (B, L, D)
        return x


class VisionTransformer(nn.Module):
    """ViT: patches as tokens plus a class token, read out through ln_post and a linear projection."""

    def __init__(self, cfg: VisionConfig, output_dim: int, activation: str):
        super().__init__()
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B, G*G, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+G*G, D)
        x = self.transformer(self.ln_pre(x))  # (B, 1+G*G, D)
        return self.ln_post(x[:, 0]) @ self.proj  # (B, E)


class CLIP(nn.Module):
    """Image and text encoders into one embedding space, with a learned temperature.

    `forward(image, text)` returns (image_features, text_features, logit_scale): features L2-normalised, (B, E)
    each, and exp of the learned log-scale clamped at 100 as in the paper. The loss (clipmodel.loss) takes exactly
    these three; logits are `logit_scale * image_features @ text_features.T`.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        v, t = cfg.vision, cfg.text
        if v.is_vit:
            self.visual = VisionTransformer(v, cfg.embed_dim, cfg.activation)
        else:
            self.visual = ModifiedResNet(v.layers, cfg.embed_dim, v.heads, v.image_size, v.width)
        self.transformer = Transformer(t.width, t.layers, t.heads, cfg.activation, causal=True)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """The release's init of the text side (the vision tower initialises itself)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        # Residual projections shrink with depth so the sum of 2 * layers branches keeps unit variance.
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, E) unnormalised image features."""
        return self.visual(image.to(self.visual.conv1.weight.dtype))  # (B, E)

    def text_hidden_states(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, L <= context_length -> (B, L, D) causal transformer outputs (before ln_final)."""
        x = self.token_embedding(text)  # (B, L, D)
        x = x + self.positional_embedding[: text.shape[1]].to(x.dtype)  # (B, L, D)
        return self.transformer(x)  # (B, L, D)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) features read at the end-of-text token.

        EOT is located as the argmax of the ids, as in the release: it has the highest id of the vocabulary, and
        padding (0) follows it, which the causal mask keeps from reaching it.
        """
        x = self.text_hidden_states(text)  # (B, L, D)
        eot = text.argmax(dim=-1)  # (B,)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, D)
        return self.ln_final(x) @ self.text_projection  # (B, E); LayerNorm is per token, so pooling first is exact

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.encode_image(image), dim=-1)  # (B, E)
        text_features = F.normalize(self.encode_text(text), dim=-1)  # (B, E)
        return image_features, text_features, self.logit_scale.exp().clamp(max=100)


# Keys that OpenAI's TorchScript checkpoints carry besides the weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def _count_blocks(state_dict: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], activation: str = "quick_gelu") -> CLIPConfig:
    """Infer the architecture from weight shapes alone, as the release does (heads are width // 64)."""
    sd = state_dict
    if "visual.proj" in sd:
        conv = sd["visual.conv1.weight"]  # (D, 3, P, P)
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = _count_blocks(sd, "visual.transformer.resblocks.")
        vision = VisionConfig(layers, conv.shape[0], image_size=conv.shape[-1] * grid, patch_size=conv.shape[-1])
    else:
        stages = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(stages, sd["visual.layer1.0.conv1.weight"].shape[0], image_size=grid * 32)
    width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=width,
        heads=width // 64,
        layers=_count_blocks(sd, "transformer.resblocks."),
    )
    return CLIPConfig(sd["text_projection"].shape[1], vision, text, activation)


def build_model(
    state_dict: Mapping[str, torch.Tensor], activation: str = "quick_gelu", config: CLIPConfig | None = None
) -> CLIP:
    """A CLIP whose architecture is inferred from `state_dict` (or given as `config`), loaded with strict=True.

    Pass `config` when the checkpoint came with one: shapes cannot tell the head count or the activation.
    The model adopts the state dict's tensors as they are (no copy, same dtype and device): it is built on the
    meta device first, so no time or memory goes into an initialisation that would be overwritten. Eval mode.
    """
    sd = {k: v for k, v in state_dict.items() if k not in _NON_WEIGHT_KEYS}
    cfg = config or config_from_state_dict(sd, activation)
    with torch.device("meta"):
        model = CLIP(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
