"""One CLIP optimisation step: autocast, gradient accumulation that keeps the contrastive batch whole, clipping.

Accumulation caches features, as open_clip's `accum_freq` does: a first pass computes every micro-batch's features
without gradients; then each micro-batch is run again with gradients and the loss is taken over the whole batch, its
own features fresh and the others' from the cache. By the chain rule, dL/dθ = Σ_j dL/df_j · df_j/dθ, and pass j
yields exactly term j, so the summed gradients equal those of one big batch (for a model whose forward is the same
twice: no dropout; BatchNorm statistics see each micro-batch twice). The temperature is used by every pass, so its
gradient is shared out 1/accum_freq per pass (open_clip counts it accum_freq times).
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipmodel.train.optim import clamp_logit_scale

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Autocast settings: fp32 (none), bf16, or fp16 (which needs the GradScaler to keep small gradients alive)."""

    name: str
    device_type: str

    @classmethod
    def resolve(cls, name: str, device: torch.device) -> "Precision":
        """`auto` is bf16 on a GPU (as fast as fp16, no loss scaling) and fp32 on a CPU (where bf16 is slow)."""
        if name == "auto":
            name = "bf16" if device.type == "cuda" else "fp32"
        if name not in _DTYPES:
            raise ValueError(f"unknown precision {name!r}")
        return cls(name, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.name])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op (and has an empty state) unless the precision is fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


@dataclass
class StepStats:
    loss: Tensor  # the global-batch loss, detached (0-dim)
    grad_norm: Tensor | None  # before clipping; None when clipping is off
    logit_scale: Tensor  # exp of the learned log-scale after the update, detached


def _share_grad(t: Tensor, parts: int) -> Tensor:
    """The same value (bit for bit: the added term is exactly 0), with 1/parts of the gradient flowing back."""
    return t.detach() + (t - t.detach()) / parts


def forward_backward(
    model: nn.Module,
    loss_fn: nn.Module,
    images: Tensor,
    texts: Tensor,
    accum_freq: int,
    precision: Precision,
    scaler: torch.amp.GradScaler,
) -> Tensor:
    """Accumulate the gradients of the loss over the whole (B, ...) batch in `accum_freq` micro-batches."""
    if accum_freq == 1:
        with precision.autocast():
            loss = loss_fn(*model(images, texts))
        scaler.scale(loss).backward()
        return loss.detach()
    micro = list(zip(images.chunk(accum_freq), texts.chunk(accum_freq), strict=True))
    with torch.no_grad(), precision.autocast():
        cached = [model(i, t)[:2] for i, t in micro]  # accum_freq x ((b, E), (b, E))
    cached_image = [f for f, _ in cached]
    cached_text = [f for _, f in cached]
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    for j, (i, t) in enumerate(micro):
        # DDP all-reduces gradients once, in the last micro-batch's backward.
        with no_sync() if j < accum_freq - 1 else contextlib.nullcontext():
            with precision.autocast():
                image_features, text_features, logit_scale = model(i, t)  # (b, E), (b, E), ()
                all_image = torch.cat([*cached_image[:j], image_features, *cached_image[j + 1 :]])  # (B, E)
                all_text = torch.cat([*cached_text[:j], text_features, *cached_text[j + 1 :]])  # (B, E)
                loss = loss_fn(all_image, all_text, _share_grad(logit_scale, accum_freq))
            scaler.scale(loss).backward()
    return loss.detach()


def train_step(
    model: nn.Module,
    raw_model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    texts: Tensor,
    *,
    accum_freq: int = 1,
    grad_clip: float = 0.0,
    precision: Precision,
) -> StepStats:
    """Zero, accumulate, (unscale and) clip, step, clamp the temperature. `model` may be DDP/compiled `raw_model`."""
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(model, loss_fn, images, texts, accum_freq, precision, scaler)
    grad_norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip).detach()
    scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    clamp_logit_scale(raw_model)
    return StepStats(loss, grad_norm, raw_model.logit_scale.detach().exp())
