"""One training step: accumulation with cached features equals one big batch; two DDP ranks equal one process."""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo import rank_then_leave
from torch.nn.parallel import DistributedDataParallel

from clipmodel.loss import ClipLoss
from clipmodel.model import CLIP, CLIPConfig
from clipmodel.train.checkpointing import check_plain
from clipmodel.train.optim import make_optimizer
from clipmodel.train.step import Precision, forward_backward, train_step

# A small dropout-free ViT CLIP: the same forward twice gives the same features, which caching relies on.
MICRO = CLIPConfig.from_dict(
    {
        "embed_dim": 32,
        "activation": "gelu",
        "vision": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 1, "layers": 1},
    }
)
FP32 = Precision.resolve("fp32", torch.device("cpu"))
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(MICRO)


def _batches(n: int = STEPS, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        images = torch.randn(size, 3, 32, 32, generator=g)  # (B, 3, R, R)
        texts = torch.randint(1, 998, (size, 16), generator=g)  # (B, L)
        texts[:, 9] = 999  # EOT, the highest id, where the text tower reads out
        out.append((images, texts))
    return out


def _train(model: torch.nn.Module, raw: CLIP, batches, accum_freq: int) -> list[float]:
    opt = make_optimizer(raw, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    scaler = FP32.grad_scaler()
    losses = []
    for images, texts in batches:
        stats = train_step(
            model, raw, ClipLoss(), opt, scaler, images, texts, accum_freq=accum_freq, grad_clip=1.0, precision=FP32
        )
        losses.append(float(stats.loss))
    return losses


def test_two_micro_batches_of_8_give_the_gradients_of_one_batch_of_16() -> None:
    images, texts = _batches(1)[0]
    whole, split = _model(), _model()
    loss_whole = forward_backward(whole, ClipLoss(), images, texts, 1, FP32, FP32.grad_scaler())
    loss_split = forward_backward(split, ClipLoss(), images, texts, 2, FP32, FP32.grad_scaler())
    torch.testing.assert_close(loss_split, loss_whole, rtol=0, atol=1e-6)
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The temperature is used by both passes: counted twice it would be double (open_clip's accum_freq does that).
    assert whole.logit_scale.grad.abs() > 1e-3


@pytest.mark.parametrize("accum_freq", [2, 4])
def test_accumulated_training_reaches_the_parameters_of_whole_batches(accum_freq: int) -> None:
    batches = _batches()
    whole, split = _model(), _model()
    losses_whole = _train(whole, whole, batches, 1)
    losses_split = _train(split, split, batches, accum_freq)
    assert losses_split == pytest.approx(losses_whole, abs=1e-5)
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(whole.visual.proj, _model().visual.proj)  # it did train


def test_precision_auto_is_fp32_on_cpu_and_only_fp16_scales() -> None:
    assert Precision.resolve("auto", torch.device("cpu")).name == "fp32"
    assert Precision.resolve("auto", torch.device("cuda", 0)).name == "bf16"
    assert not Precision.resolve("bf16", torch.device("cpu")).grad_scaler().is_enabled()
    assert Precision.resolve("fp16", torch.device("cpu")).grad_scaler().is_enabled()


def test_bf16_autocast_step_on_cpu_runs_and_stays_close_to_fp32() -> None:
    images, texts = _batches(1)[0]
    bf16 = Precision.resolve("bf16", torch.device("cpu"))
    loss32 = forward_backward(_model(), ClipLoss(), images, texts, 1, FP32, FP32.grad_scaler())
    loss16 = forward_backward(_model(), ClipLoss(), images, texts, 2, bf16, bf16.grad_scaler())
    assert loss16.dtype == torch.float32  # the loss itself is computed in float32 (clipmodel.loss)
    assert float(loss16) == pytest.approx(float(loss32), abs=0.05)


def test_step_clamps_the_temperature_parameter() -> None:
    model = _model()
    with torch.no_grad():
        model.logit_scale.fill_(4.7)  # above ln 100 = 4.605
    images, texts = _batches(1)[0]
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    stats = train_step(model, model, ClipLoss(), opt, FP32.grad_scaler(), images, texts, precision=FP32)
    assert float(stats.logit_scale) == pytest.approx(100.0)


# ---- two gloo ranks, each with half of every global batch, against one process ---------------------------------

WORLD_SIZE = 2
ACCUM_FREQS = (1, 2)


def _rank_worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        results = {}
        for accum_freq in ACCUM_FREQS:
            raw = _model()
            model = DistributedDataParallel(raw)
            half = slice(rank * 8, (rank + 1) * 8)
            batches = [(images[half], texts[half]) for images, texts in _batches()]
            losses = _train(model, raw, batches, accum_freq)
            results[accum_freq] = {"losses": losses, "params": dict(raw.named_parameters())}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_reach_the_parameters_of_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """Each rank trains on its half of every global batch of 16, with and without accumulation (micro-batches of 4
    per rank, the contrastive batch still all 16); both match one process stepping on the whole batches."""
    mp.start_processes(
        rank_then_leave,
        args=(_rank_worker, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="fork",  # no re-import of torch per rank: seconds saved on a busy machine
    )
    single = _model()
    expected_losses = _train(single, single, _batches(), 1)
    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for accum_freq, result in results.items():
            assert result["losses"] == pytest.approx(expected_losses, abs=1e-5), (rank, accum_freq)
            for name, p in single.named_parameters():
                torch.testing.assert_close(
                    result["params"][name], p.detach(), rtol=1e-4, atol=1e-5, msg=f"{name} rank {rank} x{accum_freq}"
                )


def test_fp16_steps_go_through_the_grad_scaler_whose_state_is_plain_data() -> None:
    fp16 = Precision.resolve("fp16", torch.device("cpu"))
    model = _model()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    scaler = fp16.grad_scaler()
    before = model.visual.proj.detach().clone()
    for images, texts in _batches(2):
        stats = train_step(model, model, ClipLoss(), opt, scaler, images, texts, grad_clip=1.0, precision=fp16)
    assert torch.isfinite(stats.loss) and stats.grad_norm is not None
    assert not torch.equal(model.visual.proj, before)  # the scaler let the steps through
    state = scaler.state_dict()
    assert 0 < state["scale"] <= 2.0**16 and "_growth_tracker" in state  # halved on any overflow, else grows
    check_plain(state)  # what a checkpoint stores of it loads under weights_only
