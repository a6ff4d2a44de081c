"""CLIP's symmetric contrastive loss: the pure single-batch function and its global-batch variant over ranks.

Gradient scaling across ranks (why the distributed loss needs no extra factor): DDP averages parameter
gradients, i.e. divides the sum over ranks by W. Every supported mode below makes rank r's gradient on its
own features equal to W x dL/d(features_r), where L is the single-process loss on the global batch; each
rank's parameter gradient is then W x (rank r's share of dL/dθ), and DDP's mean of those is exactly dL/dθ.
  - gather with grad: the gather's backward sums the feature gradients of all W ranks' losses (which sum to
    W x L) into the owning rank.
  - gather without grad (full loss only): each rank computes the same L but sees only its own features'
    share, so that share's gradient is multiplied by W on the way back.
The logit scale is used directly on every rank, and the mean over ranks of its per-rank gradients is
already dL/d(scale), so it is never scaled.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

_LOCAL_LOSS_NEEDS_GRAD = "local_loss=True needs gather_with_grad=True: other ranks' columns would get no gradient"


def clip_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Scaled cosine similarities, image rows x text columns, in at least float32.

    Features are already L2-normalized and the scale already exponentiated and clamped (the model's output).
    Autocast is switched off here: under it the matmul would run in bf16/fp16 and the softmax over a
    32k-wide row of logits up to 100 loses the small differences the loss is made of.
    """
    dtype = torch.promote_types(image_features.dtype, torch.float32)  # float64 stays float64 (gradcheck)
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        scale = logit_scale.to(dtype) if isinstance(logit_scale, Tensor) else logit_scale
        return scale * image_features.to(dtype) @ text_features.to(dtype).T  # (N, M)


def _symmetric_cross_entropy(logits_per_image: Tensor, logits_per_text: Tensor, labels: Tensor) -> Tensor:
    """Mean of image->text and text->image cross-entropy; `labels[i]` is the column matching row i."""
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """CLIP's loss on one batch: symmetric cross-entropy over the N x N similarity matrix, matches on the diagonal.

    Returns a float32 scalar (float64 for float64 inputs) whatever the feature dtype.
    """
    logits = clip_logits(image_features, text_features, logit_scale)  # (N, N)
    labels = torch.arange(logits.shape[0], device=logits.device)  # (N,)
    return _symmetric_cross_entropy(logits, logits.T, labels)


@torch.no_grad()
def clip_accuracy(logits_per_image: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 accuracy within the batch, (image->text, text->image), for training logs; diagonal is correct.

    Returned as 0-dim tensors so a training step logs them without forcing a device sync.
    """
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)  # (N,)
    image_to_text = (logits_per_image.argmax(dim=1) == labels).float().mean()  # ()
    text_to_image = (logits_per_image.argmax(dim=0) == labels).float().mean()  # ()
    return image_to_text, text_to_image


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice and hands it back here.

    Written out rather than using torch.distributed.nn.functional.all_gather, which is deprecated and relies
    on all-to-all. all_reduce + slice moves more bytes than reduce_scatter, but every backend has it.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, rank: int, world_size: int, group: dist.ProcessGroup | None) -> Tensor:
        ctx.rank, ctx.rows, ctx.group = rank, tensor.shape[0], group
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)  # (W * b, D)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # (W * b, D); all_reduce works in place
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None, None  # (b, D)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` on the way back."""

    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def gather_features(
    image_features: Tensor,
    text_features: Tensor,
    *,
    rank: int,
    world_size: int,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    """All ranks' features concatenated in rank order, (W * b, D) each; every rank must pass the same b.

    With `gather_with_grad` the gather carries gradients back to the ranks that own the features. Without it,
    the other ranks' features are constants and this rank's slot holds its own features with their gradient
    scaled by `world_size` (see the module docstring); that is only correct for the full loss, since with
    `local_loss` the columns this rank's features occupy in the other ranks' losses would get no gradient.
    """
    if local_loss and not gather_with_grad:
        raise ValueError(_LOCAL_LOSS_NEEDS_GRAD)
    if world_size == 1:
        return image_features, text_features

    def gather(local: Tensor) -> Tensor:
        if gather_with_grad:
            return _AllGatherWithGrad.apply(local, rank, world_size, group)  # (W * b, D)
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.detach().contiguous(), group=group)
        parts[rank] = _ScaleGrad.apply(local, float(world_size))  # the one slot autograd reaches
        return torch.cat(parts)  # (W * b, D)

    return gather(image_features), gather(text_features)


class ClipLoss(nn.Module):
    """CLIP's loss over the global batch of all ranks; exactly `clip_loss` when torch.distributed is not in use.

    `local_loss` computes only this rank's rows (b x W*b logits instead of W*b x W*b, the memory saver at
    32k batches); its returned value is this rank's share, and the mean over ranks is the global loss. The
    full loss returns the global loss on every rank. Gradients match the global batch once DDP averages them.
    """

    def __init__(
        self, *, local_loss: bool = False, gather_with_grad: bool = True, group: dist.ProcessGroup | None = None
    ):
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ValueError(_LOCAL_LOSS_NEEDS_GRAD)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.group = group

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        world_size = dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1
        if world_size == 1:
            return clip_loss(image_features, text_features, logit_scale)
        rank = dist.get_rank(self.group)
        all_image, all_text = gather_features(
            image_features,
            text_features,
            rank=rank,
            world_size=world_size,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            group=self.group,
        )  # (W * b, D) each
        if not self.local_loss:
            return clip_loss(all_image, all_text, logit_scale)
        rows = image_features.shape[0]
        # This rank's samples sit at rows rank*b .. rank*b+b-1 of the global batch, so their matches do too.
        labels = torch.arange(rows, device=image_features.device) + rank * rows  # (b,)
        logits_per_image = clip_logits(image_features, all_text, logit_scale)  # (b, W * b)
        logits_per_text = clip_logits(text_features, all_image, logit_scale)  # (b, W * b)
        return _symmetric_cross_entropy(logits_per_image, logits_per_text, labels)
