"""The CLIP model: shapes, the causal mask, end-of-text pooling, build_model, activations, init, bf16, compile."""

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipmodel.factory import create_model, list_models, load_config
from clipmodel.model import (
    CLIP,
    CLIPConfig,
    LayerNorm,
    QuickGELU,
    TextConfig,
    VisionConfig,
    build_model,
    config_from_state_dict,
)

SOT, EOT = 49406, 49407


def tokens(lengths: list[int], context: int = 77, seed: int = 0) -> torch.Tensor:
    """Token batches shaped like the tokenizer's: SOT, random words, EOT (the highest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), context, dtype=torch.long)  # (B, L)
    for i, n in enumerate(lengths):
        out[i, 0] = SOT
        out[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        out[i, n + 1] = EOT
    return out


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, S, S)


@pytest.fixture(scope="module", params=["tiny", "tiny-rn"])
def model(request) -> CLIP:
    torch.manual_seed(0)
    return create_model(request.param).eval()


def test_forward_shapes_normalisation_and_scale(model):
    with torch.no_grad():
        img, txt, scale = model(images(3), tokens([2, 10, 40]))
    assert img.shape == txt.shape == (3, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.encode_image(images(2)).shape == model.encode_text(tokens([1, 2])).shape == (2, 128)


def test_logit_scale_is_clamped_at_100():
    torch.manual_seed(0)
    m = create_model("tiny")
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
        assert m(images(1), tokens([3]))[2].item() == pytest.approx(100.0)


def test_causal_mask_keeps_later_tokens_from_earlier_positions(model):
    text = tokens([20])
    later = text.clone()
    later[0, 8] = 1234  # a different word at position 8
    with torch.no_grad():
        a, b = model.text_hidden_states(text)[0], model.text_hidden_states(later)[0]  # (L, D) each
    torch.testing.assert_close(a[:8], b[:8], rtol=0, atol=0)
    assert (a[8:22] - b[8:22]).abs().amax(dim=-1).min() > 1e-3  # position 8 and everything after it moved


def test_text_features_are_read_at_the_end_of_text_token(model):
    text = tokens([0, 5, 30, 75])  # EOT at positions 1, 6, 31 and 76 (the last)
    eot = torch.tensor([1, 6, 31, 76])
    assert torch.equal(text.argmax(dim=-1), eot)
    with torch.no_grad():
        hidden = model.text_hidden_states(text)  # (B, L, D)
        expected = model.ln_final(hidden[torch.arange(4), eot]) @ model.text_projection  # (B, E)
        torch.testing.assert_close(model.encode_text(text), expected)
        # Padding after EOT is invisible to it (causal); a word before it is not.
        padded, edited = text.clone(), text.clone()
        padded[1, 7:] = 777
        edited[1, 3] = 777
        torch.testing.assert_close(model.encode_text(padded)[1], model.encode_text(text)[1], rtol=0, atol=0)
        assert not torch.allclose(model.encode_text(edited)[1], model.encode_text(text)[1])


def test_shorter_token_batches_match_the_full_context(model):
    text = tokens([4, 9])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(text[:, :16]), model.encode_text(text), atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_is_strict_and_exact(model):
    sd = model.state_dict()
    rebuilt = build_model(sd, activation=model.config.activation)
    assert rebuilt.config == model.config
    assert not rebuilt.training
    with torch.no_grad():
        for a, b in zip(model(images(2), tokens([3, 7])), rebuilt(images(2), tokens([3, 7])), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_build_model_takes_a_config_shapes_cannot_tell():
    vision = VisionConfig(layers=1, width=64, image_size=32, patch_size=16, head_width=16)
    text_cfg = TextConfig(context_length=8, vocab_size=100, width=64, heads=4, layers=1)
    cfg = CLIPConfig(64, vision, text_cfg, activation="gelu")
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    assert config_from_state_dict(model.state_dict()).text.heads == 1  # width // 64, as the release infers
    rebuilt = build_model(model.state_dict(), config=cfg)
    assert rebuilt.config == cfg and rebuilt.visual.transformer.resblocks[0].attn.heads == 4
    text = torch.tensor([[1, 5, 99, 0, 0, 0, 0, 0]])  # (1, 8): EOT (99) at position 2
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images(1, 32), text)[1], model(images(1, 32), text)[1], rtol=0, atol=0)


def test_build_model_drops_the_torchscript_extra_keys():
    sd = create_model("tiny", device="meta").state_dict()
    sd |= {"input_resolution": torch.tensor(64), "context_length": torch.tensor(77), "vocab_size": torch.tensor(1)}
    assert build_model(sd, activation="gelu").config == load_config("tiny")


@pytest.mark.parametrize("name", list_models())
def test_build_model_recovers_every_named_config(name):
    cfg = load_config(name)
    sd = create_model(cfg, device="meta").state_dict()  # shapes only: RN50x64 would be 2.5 GB in fp32
    assert config_from_state_dict(sd, activation=cfg.activation) == cfg
    model = build_model(sd, activation=cfg.activation)  # strict=True: every key and shape matches
    assert model.config == cfg
    assert ("visual.proj" in sd) == cfg.vision.is_vit
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def test_quick_gelu_and_gelu_are_selectable():
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    assert 1e-3 < (QuickGELU()(x) - F.gelu(x)).abs().max() < 0.03
    torch.manual_seed(0)
    gelu = create_model("tiny").eval()
    quick = build_model(gelu.state_dict(), activation="quick_gelu")
    assert {type(b.mlp.gelu) for b in gelu.transformer.resblocks} == {nn.GELU}
    assert {type(b.mlp.gelu) for b in quick.transformer.resblocks} == {QuickGELU}
    assert {type(b.mlp.gelu) for b in quick.visual.transformer.resblocks} == {QuickGELU}
    with torch.no_grad():
        assert not torch.allclose(gelu.encode_text(tokens([5])), quick.encode_text(tokens([5])))
    assert load_config("RN50").activation == "quick_gelu" and load_config("tiny").activation == "gelu"


def test_initialisation_follows_the_release():
    torch.manual_seed(0)
    m = create_model("tiny-rn")
    width, layers = 128, 4
    assert m.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert m.positional_embedding.std().item() == pytest.approx(0.01, rel=0.05)
    assert m.text_projection.std().item() == pytest.approx(width**-0.5, rel=0.05)
    block = m.transformer.resblocks[0]
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    assert block.attn.in_proj_weight.std().item() == pytest.approx(width**-0.5, rel=0.05)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(proj_std, rel=0.05)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx((2 * width) ** -0.5, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(proj_std, rel=0.05)
    assert m.visual.attnpool.q_proj.weight.std().item() == pytest.approx(512**-0.5, rel=0.05)
    assert all(b.bn3.weight.eq(0).all() for s in (m.visual.layer1, m.visual.layer4) for b in s)
    assert m.visual.bn3.weight.eq(1).all()  # the stem's BN is not a residual branch: left alone
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_resnet_downsample_keys_match_the_release():
    keys = create_model("RN50", device="meta").state_dict().keys()
    assert {"visual.layer1.0.downsample.0.weight", "visual.layer2.0.downsample.1.running_var"} <= keys
    assert "visual.layer1.1.downsample.0.weight" not in keys
    assert {f"visual.attnpool.{p}_proj.bias" for p in "kqvc"} <= keys
    assert {"visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.11.mlp.c_fc.bias"} <= (
        create_model("ViT-B-32", device="meta").state_dict().keys()
    )


def test_channels_last_resnet_matches_contiguous(model):
    x = images(2)
    with torch.no_grad():
        expected = model.encode_image(x)
        cl = model.to(memory_format=torch.channels_last)
        got = cl.encode_image(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_forward_is_close_to_fp32(model):
    with torch.no_grad():
        ref = model(images(4), tokens([3, 8, 20, 60]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images(4), tokens([3, 8, 20, 60]))
    for a, b in zip(ref[:2], low[:2], strict=True):
        assert (a * b.float()).sum(dim=-1).min() > 0.99  # cosine similarity per row
    assert low[2].item() == pytest.approx(ref[2].item())


def test_captured_as_one_graph():
    # Dynamo tracing without a compiler backend: proves no graph breaks (fullgraph) in a few seconds.
    torch.manual_seed(0)
    m = create_model("tiny").eval()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for a, b in zip(compiled(images(2), tokens([4, 9])), m(images(2), tokens([4, 9])), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "tiny-rn"])
def test_inductor_compiled_matches_eager(name):
    torch.manual_seed(0)
    m = create_model(name).eval()
    t0 = time.monotonic()
    compiled = torch.compile(m)
    with torch.no_grad():
        for a, b in zip(compiled(images(2), tokens([4, 9])), m(images(2), tokens([4, 9])), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert time.monotonic() - t0 < 280


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionConfig(layers=2, width=128, image_size=60, patch_size=8)
    with pytest.raises(ValueError, match="four positive stage depths"):
        VisionConfig(layers=(1, 1, 1), width=16, image_size=64)
    with pytest.raises(ValueError, match="head_width"):
        VisionConfig(layers=2, width=100, image_size=64, patch_size=8)
    with pytest.raises(ValueError, match="activation"):
        CLIPConfig(128, VisionConfig(layers=2, width=128, patch_size=8), TextConfig(), activation="relu")
    with pytest.raises(ValueError, match="unknown model config keys"):
        CLIPConfig.from_dict({"embed_dim": 8, "vision": {"layers": 1, "width": 64, "patch_size": 8}, "txt": {}})


def test_resnet_runs_channels_last_and_matches_the_contiguous_layout():
    torch.manual_seed(0)
    model = create_model("tiny-rn").eval()
    visual = model.visual
    seen = {}

    def record(module, inputs, output):  # returns None: a hook's return value would replace the output
        seen["cl"] = output.is_contiguous(memory_format=torch.channels_last)

    hook = visual.layer1.register_forward_hook(record)
    image = torch.randn(2, 3, 64, 64)  # (B, 3, S, S), contiguous NCHW
    with torch.no_grad():
        got = model.encode_image(image)  # (B, E)
    hook.remove()
    assert seen["cl"], "feature maps inside the ResNet should be channels-last"
    assert got.shape == (2, model.visual.attnpool.c_proj.out_features)
    with torch.no_grad():
        again = model.encode_image(image.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, again, rtol=0, atol=0)


def test_layer_norm_works_in_at_least_float32_and_keeps_float64():
    ours, reference = LayerNorm(8), nn.LayerNorm(8)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
            p.copy_(torch.randn(8))
            q.copy_(p)
    x = torch.randn(4, 8, dtype=torch.float64) * 1e3 + 1e6  # large mean: float32 would lose digits
    ours_64, reference_64 = ours.double(), reference.double()
    out = ours_64(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_64(x), rtol=0, atol=1e-9)
    half = ours.float()(x.float().to(torch.bfloat16))  # bf16 in, bf16 out, computed in float32
    assert half.dtype == torch.bfloat16
    expected = F.layer_norm(x.float().to(torch.bfloat16).float(), (8,), ours.weight.float(), ours.bias.float())
    torch.testing.assert_close(half.float(), expected.to(torch.bfloat16).float())
