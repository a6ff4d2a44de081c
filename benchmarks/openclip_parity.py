"""Checkpoint compatibility with open_clip: its models' state dicts load into ours and give the same outputs.

    OPENCLIP_VENV/bin/python benchmarks/openclip_parity.py [--models RN50 ViT-B-32 tiny] [--batch 4]

Runs in a separate venv that has open_clip_torch and its own torch (`python3.11 -m venv OPENCLIP_VENV &&
OPENCLIP_VENV/bin/pip install open_clip_torch`); our package is imported from this checkout.
For each named config: build open_clip's model (the `-quickgelu` variant for OpenAI's architectures, which is what
their checkpoints need; our tiny configs are handed to open_clip as JSON configs), perturb every weight so no branch
is trivially zero, set BatchNorm statistics from a batch, save its state dict, load that file with our
`load_state_dict_file` + `build_model` (strict=True), and compare image features, text features and logits on the
same random batch. Writes benchmarks/results/openclip_parity.json.
"""

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # our package, from this checkout, whatever venv runs the script

from clipmodel.checkpoint import load_state_dict_file  # noqa: E402
from clipmodel.factory import count_parameters, list_models, load_config  # noqa: E402
from clipmodel.model import CLIPConfig, build_model  # noqa: E402

RESULTS = ROOT / "results" / "openclip_parity.json"
SOT, EOT = 49406, 49407


def openclip_config(cfg: CLIPConfig) -> dict:
    """Our config in open_clip's JSON layout, for the architectures open_clip does not name (the tiny ones)."""
    v, t = cfg.vision, cfg.text
    vision = {"image_size": v.image_size, "layers": v.layers if v.is_vit else list(v.layers), "width": v.width}
    if v.is_vit:
        vision["patch_size"] = v.patch_size
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads}
    text["layers"] = t.layers
    return {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.activation == "quick_gelu", "vision_cfg": vision,
            "text_cfg": text}  # fmt: skip


def openclip_model(name: str, cfg: CLIPConfig, config_dir: Path) -> torch.nn.Module:
    import open_clip

    if name.startswith(("RN", "ViT")):
        return open_clip.create_model(f"{name}-quickgelu", pretrained=None)
    path = config_dir / f"wit-{name}.json"
    path.write_text(json.dumps(openclip_config(cfg)))
    open_clip.add_model_config(path)
    return open_clip.create_model(f"wit-{name}", pretrained=None)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere: init leaves each bottleneck's bn3 at zero, which would hide its convs."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            t.copy_(1 + 0.5 * noise.abs())
        elif name.endswith("logit_scale"):
            continue
        else:
            t.add_(0.02 * noise)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set BatchNorm statistics from real activations: with made-up ones a deep random ResNet maps every image to
    nearly the same feature, and a comparison of features would then say little about the image path."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batch
    if norms:
        model.train()
        model.encode_image(images)
    model.eval()


def batch(cfg: CLIPConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size
    images = torch.randn(n, 3, s, s, generator=g)  # (B, 3, S, S)
    text = torch.zeros(n, cfg.text.context_length, dtype=torch.long)  # (B, L)
    for i in range(n):
        length = int(torch.randint(1, cfg.text.context_length - 1, (1,), generator=g))  # EOT anywhere
        text[i, 0], text[i, length] = SOT, EOT
        text[i, 1:length] = torch.randint(1, SOT, (length - 1,), generator=g)
    return images, text


def compare(name: str, n: int, work: Path) -> dict:
    cfg = load_config(name)
    t0 = time.monotonic()
    torch.manual_seed(0)
    theirs = openclip_model(name, cfg, work).eval()
    perturb(theirs, seed=1)
    calibrate_batchnorm(theirs, batch(cfg, 8, seed=3)[0])
    path = work / f"{name}.pt"
    torch.save(theirs.state_dict(), path)
    ours = build_model(load_state_dict_file(path), activation=cfg.activation)  # strict=True inside
    path.unlink()
    images, text = batch(cfg, n, seed=2)
    with torch.no_grad():
        their_img = theirs.encode_image(images, normalize=True)  # (B, E)
        their_txt = theirs.encode_text(text, normalize=True)  # (B, E)
        their_logits = theirs.logit_scale.exp() * their_img @ their_txt.T  # (B, B)
        our_img, our_txt, scale = ours(images, text)
        our_logits = scale * our_img @ our_txt.T  # (B, B)
    row = {
        "model": name,
        "openclip_params": sum(p.numel() for p in theirs.parameters()),
        "our_params": count_parameters(ours),
        "our_params_meta": count_parameters(cfg),
        "config_inferred_equals_named": ours.config == cfg,
        "max_abs_diff_image_features": (our_img - their_img).abs().max().item(),
        "max_abs_diff_text_features": (our_txt - their_txt).abs().max().item(),
        "max_abs_diff_logits": (our_logits - their_logits).abs().max().item(),
        "max_abs_logit": their_logits.abs().max().item(),
        # How far apart two inputs' features are: the scale a difference between the two models is measured against.
        "image_feature_spread": (their_img[0] - their_img[1]).abs().max().item(),
        "text_feature_spread": (their_txt[0] - their_txt[1]).abs().max().item(),
        "batch": n,
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list_models())
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import open_clip

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(compare(name, args.batch, Path(tmp)))
            gc.collect()
    result = {
        "benchmark": "openclip_parity",
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "open_clip": open_clip.__version__,
        "note": "open_clip's randomly initialised then perturbed weights, saved and loaded into ours with strict=True; "
        "fp32 on CPU; features are L2-normalised, logits include the logit scale (1/0.07)",
        "all_params_equal": all(r["openclip_params"] == r["our_params"] == r["our_params_meta"] for r in rows),
        "max_abs_diff_features": max(
            max(r["max_abs_diff_image_features"], r["max_abs_diff_text_features"]) for r in rows
        ),
        "max_abs_diff_logits": max(r["max_abs_diff_logits"] for r in rows),
        "runs": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
