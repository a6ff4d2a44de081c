"""CLIP-paper evaluation of a model: zero-shot reports (top-k, per class, confusion, per template, per split) and
robustness to distribution shift (one classifier on a set and its shifted copies, and the accuracy each one loses).

    files = read_labels("web/eval")
    report = evaluate_zeroshot(model, resolution, files, EvalConfig(templates=IMAGENET80))
    shifts = evaluate_shifts(model, resolution, {"eval": "web/eval", "sketch": "web/eval_shift/sketch"}, "eval")

The metrics are pure functions of features (`zeroshot_report`, `robustness_report`), tested without a model; the
rest only encodes. Images stream through a DataLoader in batches, so a set of any size never sits in memory.
Retrieval and the linear probe are in clipmodel.eval.retrieval and clipmodel.eval.linear_probe.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from clipmodel import transform
from clipmodel.eval.config import EvalConfig
from clipmodel.eval.zeroshot import LabelledFiles, ensemble, prompt_embeddings, read_labels, topk_accuracy
from clipmodel.tokenizer import tokenize


class _Images(Dataset):
    """Decoded, centre-cropped (3, R, R) uint8 images; a file that is not an image stops the evaluation."""

    def __init__(self, paths: Sequence[Path], resolution: int):
        self.paths, self.resolution = list(paths), resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            return torch.from_numpy(transform.load(Path(path).read_bytes(), self.resolution))  # (3, R, R) uint8
        except OSError as e:  # PIL's UnidentifiedImageError is one
            # A silently skipped image would change the denominator of every number reported.
            raise ValueError(f"{path}: cannot read this image ({e})") from None


@torch.no_grad()
def image_features(
    model: torch.nn.Module,
    paths: Sequence[Path],
    resolution: int,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    normalize: bool = True,
) -> torch.Tensor:
    """(N, E) float32 image embeddings on the CPU, in `paths` order, L2-normalised unless `normalize=False`."""
    loader = DataLoader(_Images(paths, resolution), batch_size=batch_size, num_workers=workers)
    out = []
    for pixels in loader:  # (b, 3, R, R) uint8
        images = transform.normalize(pixels.numpy()).to(device)  # (b, 3, R, R) float32
        features = model.encode_image(images).float()  # (b, E)
        out.append((F.normalize(features, dim=-1) if normalize else features).cpu())
    if not out:
        raise ValueError("no images to encode")
    return torch.cat(out)


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    flat = targets.long() * num_classes + predicted.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def zeroshot_report(
    features: torch.Tensor,
    prompts: torch.Tensor,
    targets: torch.Tensor,
    classnames: Sequence[str],
    templates: Sequence[str],
    split: Sequence[str] | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Every zero-shot number for normalised image features (N, E) against prompt embeddings (C, T, E).

    top-k of the prompt ensemble; per-class top-1 (None for a class with no images) and its mean; the confusion
    matrix; the top-1 of each template alone; and, given each image's `split`, top-k within each split (still
    classified among all the classes).
    """
    features, prompts, targets = features.float(), prompts.float(), targets.long()
    logits = features @ ensemble(prompts)  # (N, C)
    predicted = logits.argmax(dim=1)  # (N,)
    confusion = confusion_matrix(predicted, targets, len(classnames))  # (C, C)
    per_image = confusion.sum(dim=1)  # (C,)
    per_class = {
        name: (int(confusion[c, c]) / int(per_image[c]) if per_image[c] else None) for c, name in enumerate(classnames)
    }
    scored = [v for v in per_class.values() if v is not None]
    report: dict[str, Any] = {
        "images": len(targets),
        "classes": len(classnames),
        "templates": len(templates),
        **topk_accuracy(logits, targets, topk),
        "mean_per_class": sum(scored) / len(scored) if scored else 0.0,
        "per_class": per_class,
        "per_template": {
            t: topk_accuracy(features @ prompts[:, i].T, targets, (1,))["top1"]  # each prompt alone: (N, C) logits
            for i, t in enumerate(templates)
        },
        "confusion": confusion.tolist(),
    }
    if split is not None:
        names = np.asarray(split)
        report["by_split"] = {}
        for name in sorted(set(split)):
            mask = torch.from_numpy(names == name)  # (N,) bool
            report["by_split"][name] = {"images": int(mask.sum()), **topk_accuracy(logits[mask], targets[mask], topk)}
    return report


def evaluate_zeroshot(
    model: torch.nn.Module,
    resolution: int,
    files: LabelledFiles,
    cfg: EvalConfig = EvalConfig(),
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
) -> dict[str, Any]:
    """`zeroshot_report` of `model` on a labelled set."""
    prompts = prompt_embeddings(model, files.classnames, cfg.templates, device, tokenizer, cfg.batch_size).cpu()
    return _report(model, resolution, files, prompts, cfg, device)


def _report(model, resolution, files: LabelledFiles, prompts: torch.Tensor, cfg: EvalConfig, device) -> dict:
    features = image_features(model, files.paths, resolution, device, cfg.batch_size, cfg.workers)  # (N, E)
    targets = torch.tensor(files.targets, dtype=torch.long)  # (N,)
    return zeroshot_report(features, prompts, targets, files.classnames, cfg.templates, files.split, cfg.topk)


def robustness_report(reports: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, Any]:
    """Each set's top-k and, for the shifted ones, what they lose against `reference`: the absolute drop and the
    fraction kept (shifted / reference top-1). The paper's effective robustness compares such numbers across many
    models; for one model the drop is what can be said."""
    base = reports[reference]
    keys = [k for k in base if k.startswith("top")]
    sets: dict[str, dict[str, Any]] = {}
    for name, r in reports.items():
        entry = {"images": r["images"], **{k: r[k] for k in keys}}
        if name != reference:
            entry |= {f"drop_{k}": base[k] - r[k] for k in keys}
            entry["relative_top1"] = r["top1"] / base["top1"] if base["top1"] else None
        if "by_split" in r:
            entry["by_split_top1"] = {s: v["top1"] for s, v in r["by_split"].items()}
        sets[name] = entry
    shifted = [sets[n] for n in sets if n != reference]
    summary = {"reference": reference, "sets": sets}
    if shifted:
        summary["mean_shifted_top1"] = sum(s["top1"] for s in shifted) / len(shifted)
        summary["mean_drop_top1"] = base["top1"] - summary["mean_shifted_top1"]
    return summary


def evaluate_shifts(
    model: torch.nn.Module,
    resolution: int,
    sets: Mapping[str, str | Path],
    reference: str,
    cfg: EvalConfig = EvalConfig(),
    device: torch.device | str = "cpu",
    tokenizer: Callable[..., torch.Tensor] = tokenize,
) -> dict[str, Any]:
    """Zero-shot on the `reference` set and on each shifted copy in `sets` ({name: folder}) with one classifier
    built from the reference's class names: {"reports": {name: zeroshot_report}, "robustness": robustness_report}."""
    if reference not in sets:
        raise ValueError(f"reference set {reference!r} is not among {sorted(sets)}")
    base = read_labels(sets[reference])
    prompts = prompt_embeddings(model, base.classnames, cfg.templates, device, tokenizer, cfg.batch_size).cpu()
    reports = {}
    for name, folder in sets.items():
        files = base if name == reference else read_labels(folder, base.classnames)
        reports[name] = _report(model, resolution, files, prompts, cfg, device)
    return {"reports": reports, "robustness": robustness_report(reports, reference)}
