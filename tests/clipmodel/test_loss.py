"""Tests for CLIP's contrastive loss: hand-computed values, limits, gradients, low precision, and the 2-rank loss."""

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gloo import rank_then_leave
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipmodel.loss import ClipLoss, clip_accuracy, clip_logits, clip_loss, gather_features


def _unit_rows(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _reference_loss(image: np.ndarray, text: np.ndarray, scale: float) -> float:
    """The loss written out with loops and math, independent of torch: mean of row and column cross-entropies."""
    n = image.shape[0]
    sims = [[scale * float(np.dot(image[i], text[j])) for j in range(n)] for i in range(n)]
    image_to_text = [-sims[i][i] + math.log(sum(math.exp(sims[i][j]) for j in range(n))) for i in range(n)]
    text_to_image = [-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)]
    return (sum(image_to_text) / n + sum(text_to_image) / n) / 2


def test_two_by_two_by_hand() -> None:
    # Identical orthonormal pairs at scale 1: each row's logits are (1, 0), so each cross-entropy is
    # -log(e / (e + 1)) = log(1 + 1/e), in both directions.
    eye = torch.eye(2)
    assert clip_loss(eye, eye, torch.tensor(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_three_by_three_matches_written_out_math() -> None:
    image = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    text = np.array([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = _reference_loss(image, text, scale=3.0)
    loss = clip_loss(torch.tensor(image, dtype=torch.float32), torch.tensor(text, dtype=torch.float32), 3.0)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_random_batch_matches_written_out_math() -> None:
    image, text = _unit_rows(5, 8, seed=1, dtype=torch.float64), _unit_rows(5, 8, seed=2, dtype=torch.float64)
    expected = _reference_loss(image.numpy(), text.numpy(), scale=14.3)
    assert clip_loss(image, text, torch.tensor(14.3, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)


def test_swapping_image_and_text_gives_the_same_loss() -> None:
    image, text = _unit_rows(6, 8, seed=3), _unit_rows(6, 8, seed=4)
    scale = torch.tensor(20.0)
    torch.testing.assert_close(clip_loss(image, text, scale), clip_loss(text, image, scale))


def test_aligned_features_with_a_large_scale_give_zero_loss() -> None:
    eye = torch.eye(4)  # (N, D) orthonormal, paired with itself
    # At the model's clamp of 100 the off-diagonal terms are e^-100 of the diagonal one.
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_vanishing_scale_gives_log_n() -> None:
    image, text = _unit_rows(7, 8, seed=5), _unit_rows(7, 8, seed=6)
    assert clip_loss(image, text, torch.tensor(0.0)).item() == pytest.approx(math.log(7), rel=1e-6)
    assert clip_loss(image, text, torch.tensor(1e-6)).item() == pytest.approx(math.log(7), rel=1e-5)


def test_gradcheck_in_float64() -> None:
    image = _unit_rows(3, 4, seed=7, dtype=torch.float64).requires_grad_()
    text = _unit_rows(3, 4, seed=8, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(clip_loss, (image, text, scale))


def test_bf16_features_give_a_float32_loss_close_to_fp32() -> None:
    image, text = _unit_rows(16, 32, seed=9), _unit_rows(16, 32, seed=10)
    scale = torch.tensor(1 / 0.07)
    low = clip_loss(image.bfloat16(), text.bfloat16(), scale.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, clip_loss(image, text, scale), rtol=2e-2, atol=0.0)
    # Past the bf16 rounding of the inputs everything runs in float32.
    rounded = clip_loss(image.bfloat16().float(), text.bfloat16().float(), scale.bfloat16().float())
    torch.testing.assert_close(low, rounded, rtol=1e-6, atol=0.0)


def test_autocast_does_not_lower_the_loss_precision() -> None:
    image, text = _unit_rows(16, 32, seed=11), _unit_rows(16, 32, seed=12)
    scale = torch.tensor(100.0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = clip_loss(image, text, scale)
        logits = clip_logits(image, text, scale)
    assert under_autocast.dtype == torch.float32 and logits.dtype == torch.float32
    torch.testing.assert_close(under_autocast, clip_loss(image, text, scale), rtol=1e-6, atol=0.0)


def test_accuracy_counts_the_diagonal_wins_each_way() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0]])
    image_to_text, text_to_image = clip_accuracy(logits)
    # Row 0 prefers text 1; every column's best image is its own.
    assert image_to_text.item() == pytest.approx(2 / 3) and text_to_image.item() == 1.0


def test_without_torch_distributed_the_module_is_the_plain_loss() -> None:
    assert not dist.is_initialized()
    image, text = _unit_rows(5, 8, seed=13), _unit_rows(5, 8, seed=14)
    scale = torch.tensor(30.0)
    for local_loss in (False, True):
        assert torch.equal(ClipLoss(local_loss=local_loss)(image, text, scale), clip_loss(image, text, scale))
    gathered = gather_features(image, text, rank=0, world_size=1)
    assert gathered[0] is image and gathered[1] is text


def test_local_loss_without_gradient_gather_is_refused() -> None:
    with pytest.raises(ValueError, match="gather_with_grad"):
        ClipLoss(local_loss=True, gather_with_grad=False)


# ---- two ranks on gloo against one process on the global batch ---------------------------------------------

WORLD_SIZE = 2
GLOBAL_BATCH = 8
MODES = [(False, True), (True, True), (False, False)]  # (local_loss, gather_with_grad)


class _TinyClip(nn.Module):
    """Two linear 'encoders' and a learnable temperature, returning what the real model's forward returns."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.image = nn.Linear(6, 4, dtype=torch.float64)
        self.text = nn.Linear(5, 4, dtype=torch.float64)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.image(images), dim=-1)  # (B, 4)
        text_features = F.normalize(self.text(texts), dim=-1)  # (B, 4)
        return image_features, text_features, self.logit_scale.exp().clamp(max=100)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 6, generator=generator, dtype=torch.float64)  # (B, 6)
    texts = torch.randn(GLOBAL_BATCH, 5, generator=generator, dtype=torch.float64)  # (B, 5)
    return images, texts


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        images, texts = _global_batch()
        shard = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        results = {}
        for local_loss, gather_with_grad in MODES:
            model = DistributedDataParallel(_TinyClip())  # averages gradients over ranks in backward
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
            loss = loss_fn(*model(images[shard], texts[shard]))
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)  # with local_loss each rank holds its share; the mean is the global loss
            grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
            results[(local_loss, gather_with_grad)] = (mean_loss / WORLD_SIZE, grads)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    args = (_worker, f"file://{tmp_path / 'rendezvous'}", str(tmp_path))
    mp.spawn(rank_then_leave, args=args, nprocs=WORLD_SIZE, join=True)

    model = _TinyClip()
    expected_loss = clip_loss(*model(*_global_batch()))
    expected_loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    assert all(g.abs().max() > 1e-3 for g in expected.values())  # every parameter really gets a gradient

    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for mode in MODES:
            loss, grads = results[mode]
            torch.testing.assert_close(loss, expected_loss.detach(), rtol=0, atol=1e-12, msg=f"loss {mode}")
            for name, grad in grads.items():
                torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-12, msg=f"{name} {mode}")
