"""The optimiser side of training: which parameters get weight decay, the warm-up + cosine schedule, the clamp."""

import math

import pytest
import torch

from clipmodel.factory import create_model
from clipmodel.train.optim import (
    MAX_LOGIT_SCALE,
    clamp_logit_scale,
    lr_at,
    make_optimizer,
    no_decay_names,
    param_groups,
)


def test_tiny_vit_no_decay_is_gains_biases_embeddings_and_temperature() -> None:
    model = create_model("tiny", device="meta")
    skip = no_decay_names(model)
    top_level = {n for n in skip if "resblocks" not in n}
    assert top_level == {
        "logit_scale",
        "token_embedding.weight",  # 2-D, excluded by name
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.ln_pre.bias",
        "visual.ln_post.weight",
        "visual.ln_post.bias",
    }
    block = {n.removeprefix("transformer.resblocks.0.") for n in skip if n.startswith("transformer.resblocks.0.")}
    assert block == {
        "attn.in_proj_bias",
        "attn.out_proj.bias",
        "ln_1.weight",
        "ln_1.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.bias",
        "mlp.c_proj.bias",
    }
    decayed = {n for n, _ in model.named_parameters() if n not in skip and "resblocks" not in n}
    assert decayed == {"visual.conv1.weight", "visual.proj", "text_projection"}


def test_resnet_batchnorm_weights_are_not_decayed_and_convs_are() -> None:
    model = create_model("tiny-rn", device="meta")
    skip = no_decay_names(model)
    assert {"visual.bn1.weight", "visual.layer1.0.bn3.weight", "visual.layer1.0.downsample.1.weight"} <= skip
    assert "visual.attnpool.positional_embedding" in skip
    assert not {"visual.conv1.weight", "visual.layer1.0.conv2.weight", "visual.attnpool.q_proj.weight"} & skip


def test_groups_cover_every_parameter_once_and_only_the_first_decays() -> None:
    model = create_model("tiny", device="meta")
    decay, no_decay = param_groups(model, 0.2)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.2, 0.0)
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim >= 2 for p in decay["params"])


def test_adamw_decay_leaves_excluded_parameters_alone_without_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("tiny-rn")
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only decoupled decay moves anything
    opt.step()
    skip = no_decay_names(model)
    for name, p in model.named_parameters():
        if name in skip:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.5), msg=name)


def test_schedule_warms_up_linearly_peaks_and_ends_near_zero() -> None:
    base, warmup, total = 1e-3, 10, 110
    assert lr_at(0, base, warmup, total) == pytest.approx(base / 10)
    assert lr_at(4, base, warmup, total) == pytest.approx(base / 2)
    assert lr_at(9, base, warmup, total) == pytest.approx(base)  # the last warm-up step reaches the peak
    assert lr_at(10, base, warmup, total) == pytest.approx(base)  # cosine starts at the peak
    assert lr_at(60, base, warmup, total) == pytest.approx(base / 2)  # half-way down the cosine
    assert lr_at(109, base, warmup, total) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(110, base, warmup, total) == 0.0
    assert lr_at(500, base, warmup, total) == 0.0  # past the end stays at zero, never climbs back
    rates = [lr_at(s, base, warmup, total) for s in range(total)]
    assert rates[warmup:] == sorted(rates[warmup:], reverse=True)


def test_schedule_edge_cases_no_warmup_and_warmup_past_the_end() -> None:
    assert lr_at(0, 1.0, 0, 10) == 1.0
    assert lr_at(5, 1.0, 0, 10) == pytest.approx(0.5)
    assert lr_at(7, 1.0, 20, 10) == pytest.approx(8 / 20)  # still warming up when the run ends


def test_schedule_is_a_function_of_the_step_only() -> None:
    # What exact resume relies on: the rate at step s never depends on the path there.
    assert [lr_at(s, 5e-4, 3, 16) for s in range(16)] == [lr_at(s, 5e-4, 3, 16) for s in range(16)]


def test_temperature_parameter_is_clamped_to_zero_and_ln_100() -> None:
    model = create_model("tiny", device="meta").to_empty(device="cpu")
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert math.exp(model.logit_scale.item()) == pytest.approx(100.0)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0
