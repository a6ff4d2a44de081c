"""`wit eval`: the CLIP paper's evaluations of a model: zero-shot, robustness to shift, retrieval, linear probe.

torch and the evaluation code are imported only when the command runs, so `wit --help` stays fast.
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from clipmodel.eval.config import EvalConfig
from clipmodel.templates import NAMED, load_templates
from wit import CommandError

_D = EvalConfig()  # the defaults the help shows; None from a flag means this one
_D_TEMPLATES = next(name for name, t in NAMED.items() if t == _D.templates)  # its template set, by name

_EPILOG = """\
labelled sets (--zeroshot, --shifts, --linear-probe) are folders holding labels.parquet (path, label[, split]) and
the images, or image-folder trees (one subfolder per class; class name = folder name, _ and - read as spaces).
A --zeroshot set may also be shards (our dataset, img2dataset output, a .tar) whose samples name their class in a
field of their .json member: say which with --label-field (img2dataset's --save_additional_columns writes one).
--web WEBDIR evaluates a synthetic web's eval/ (by split: train vs held-out classes) and every eval_shift/<shift>/
with the same classifier, reporting each shift's accuracy drop. Retrieval treats identical captions as one text.
Results go to --out as JSON; a summary table is printed.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a CLIP model: zero-shot, robustness, retrieval Recall@K, linear probe",
        description="Evaluate a CLIP model as the CLIP paper does: zero-shot classification with prompt ensembles, "
        "its robustness to distribution shift, image-text retrieval, and a logistic-regression linear probe.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="SPEC", help="a `wit train` run folder, a checkpoint, or a weights file")
    p.add_argument("--arch", metavar="NAME", help="architecture of bare weights: a named config or a JSON path")
    p.add_argument("--zeroshot", nargs="+", action="extend", default=[], metavar="DIR", help="labelled sets")
    p.add_argument("--label-field", metavar="NAME", help="--zeroshot shards: the JSON field holding each class")
    p.add_argument("--web", type=Path, metavar="WEBDIR",
                   help="a synthetic web: eval/ and every eval_shift/<shift>/ (and with --retrieval, its truth judges "
                        "the pairs)")  # fmt: skip
    p.add_argument("--shifts", nargs="+", action="extend", default=[], metavar="DIR",
                   help="shifted copies of the first --zeroshot set: robustness against it")  # fmt: skip
    p.add_argument("--templates", metavar="SET",
                   help=f"a named set ({', '.join(NAMED)}) or a file, one template a line "
                   f"(default: the set {_D_TEMPLATES!r})")  # fmt: skip
    p.add_argument("--retrieval", metavar="EMB|DATASET", help="an embeddings folder, or a dataset to encode (--model)")
    p.add_argument("--linear-probe", nargs=2, metavar=("TRAIN", "TEST"), help="labelled sets to fit and to test on")
    p.add_argument("--out", type=Path, metavar="FILE.json", help="write every result here as JSON")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default %(default)s")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"images per forward pass (default {_D.batch_size})")
    p.add_argument("--workers", type=int, metavar="N", help=f"image decoding processes (default {_D.workers})")
    p.set_defaults(func=run_eval)


def web_eval_sets(web: Path) -> dict[str, Path]:
    """{"eval": WEB/eval, <shift>: WEB/eval_shift/<shift>, ...} for a synthetic web, shifts in name order."""
    from synthweb.truth import EVAL_DIR, EVAL_SHIFT_DIR, LABELS_FILE

    base = web / EVAL_DIR
    if not (base / LABELS_FILE).is_file():
        raise CommandError(f"--web {web}: no {EVAL_DIR}/{LABELS_FILE}; is it a synthetic web (`wit web generate`)?")
    shift_root = web / EVAL_SHIFT_DIR
    shifts = sorted(d for d in shift_root.iterdir() if (d / LABELS_FILE).is_file()) if shift_root.is_dir() else []
    return {EVAL_DIR: base, **{d.name: d for d in shifts}}


def _named(reference: str, shifts: list[str]) -> tuple[dict[str, str], str]:
    """Sets named by folder name, or by path where two folders share a name."""
    folders = [reference, *shifts]
    names = [Path(f).name for f in folders]
    if len(set(names)) != len(names):
        names = folders
    return dict(zip(names, folders, strict=True)), names[0]


def run_eval(args: argparse.Namespace) -> int:
    from clipmodel.embed.embeddings import INFO_FILE

    if args.shifts and not args.zeroshot:
        raise CommandError("--shifts needs a --zeroshot set to compare against (the first one)")
    if not (args.zeroshot or args.web or args.retrieval or args.linear_probe):
        raise CommandError("nothing to evaluate: give --zeroshot, --web, --retrieval or --linear-probe")
    if (args.batch_size is not None and args.batch_size < 1) or (args.workers is not None and args.workers < 0):
        raise CommandError("--batch-size must be >= 1 and --workers >= 0")
    _check_shard_sets(args)
    embeddings_given = args.retrieval is not None and (Path(args.retrieval) / INFO_FILE).is_file()
    needs_model = args.zeroshot or args.web or args.linear_probe or (args.retrieval and not embeddings_given)
    if needs_model and not args.model:
        raise CommandError("--model is required for zero-shot, the linear probe, and retrieval on a dataset")
    results = evaluate(args)
    print(format_table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")
    return 0


def _check_shard_sets(args: argparse.Namespace) -> None:
    """Shards need --label-field, and are zero-shot sets only (shifts compare folders); before any model loads."""
    from clipmodel.eval.labelled_shards import is_shard_set

    shards = [f for f in args.zeroshot if is_shard_set(f)]
    if shards and not args.label_field:
        raise CommandError(f"--zeroshot {shards[0]} holds shards: give --label-field, the JSON field naming each class")
    if args.label_field and not shards:
        raise CommandError("--label-field applies to --zeroshot shards, and no --zeroshot set is shards")
    if args.shifts and shards and args.zeroshot[0] in shards:
        raise CommandError("--shifts compares labelled folders; the first --zeroshot set is shards")


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The settings the flags give (--templates read), EvalConfig's defaults for the others."""
    from pipeline import settings

    templates = load_templates(args.templates) if args.templates is not None else None
    return EvalConfig(**settings.given(templates=templates, batch_size=args.batch_size, workers=args.workers))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Every evaluation the arguments ask for, as one JSON-ready dict."""
    from clipmodel.eval.labelled_shards import evaluate_zeroshot_shards, is_shard_set
    from clipmodel.eval.reports import evaluate_shifts, evaluate_zeroshot
    from clipmodel.eval.zeroshot import read_labels
    from clipmodel.inference import load_model, resolve_device

    cfg = eval_config(args)
    comparisons = []  # (sets, reference): found before the model loads, so a wrong folder fails fast
    if args.web:
        comparisons.append((web_eval_sets(args.web), "eval"))
    if args.shifts:
        comparisons.append(_named(args.zeroshot[0], args.shifts))
    loaded = load_model(args.model, args.arch, args.device) if args.model else None
    device = next(loaded.model.parameters()).device if loaded else resolve_device(args.device)
    template_set = args.templates if args.templates is not None else _D_TEMPLATES
    results: dict[str, Any] = {"model": None, "templates": {"set": template_set, "count": len(cfg.templates)}}
    model, resolution = (loaded.model, loaded.resolution) if loaded else (None, 0)
    if loaded:
        results["model"] = {"description": loaded.description, "weights_sha256": loaded.weights_sha256}
    zeroshot, robustness = {}, {}
    for sets, reference in comparisons:
        out = evaluate_shifts(model, resolution, sets, reference, cfg, device)
        zeroshot[str(sets[reference])] = out["reports"][reference]
        robustness[str(sets[reference])] = out["robustness"]
    for folder in args.zeroshot:
        if folder in zeroshot:
            continue
        if is_shard_set(folder):
            zeroshot[folder] = evaluate_zeroshot_shards(model, resolution, folder, args.label_field, cfg, device)
            zeroshot[folder]["label_field"] = args.label_field
        else:
            zeroshot[folder] = evaluate_zeroshot(model, resolution, read_labels(folder), cfg, device)
    if zeroshot:
        results["zeroshot"] = zeroshot
    if robustness:
        results["robustness"] = robustness
    if args.retrieval:
        results["retrieval"] = _retrieval(args, loaded, cfg, device)
    if args.linear_probe:
        results["linear_probe"] = _linear_probe(args, loaded, cfg, device)
    return results


def _retrieval(args: argparse.Namespace, loaded, cfg, device) -> dict[str, Any]:
    from clipmodel.embed.config import EncodeConfig
    from clipmodel.embed.embeddings import INFO_FILE, load_embeddings
    from clipmodel.embed.encode import encode_dataset
    from clipmodel.eval.retrieval import retrieval_report

    source = Path(args.retrieval)
    if (source / INFO_FILE).is_file():
        emb = load_embeddings(source)
    else:
        with tempfile.TemporaryDirectory(prefix="wit-eval-") as tmp:
            encode_dataset(args.retrieval, loaded, Path(tmp) / "emb", EncodeConfig(cfg.batch_size, cfg.workers))
            emb = load_embeddings(Path(tmp) / "emb")
    if len(emb) == 0:
        raise CommandError(f"--retrieval {source}: no embeddings to retrieve among")
    out = {"source": str(source), **retrieval_report(emb.image, emb.text, emb.captions, device=device)}
    if args.web:
        out["web_truth"] = _retrieval_vs_truth(emb, args.web, device)
    return out


def _retrieval_vs_truth(emb, web: Path, device) -> dict[str, Any]:
    """What the retrieval numbers could be, by the synthetic web's truth: web alt text names another picture's class
    now and then (as on the real web), and no model finds a pair whose caption describes something else. Reports
    the pairs whose caption names the class their picture shows, the model's recall on those alone, and the recall
    of a retriever perfect at the class and blind to the rest (label_oracle_report)."""
    from clipmodel.eval.retrieval import label_oracle_report, retrieval_report
    from synthweb.captions import named_class
    from synthweb.truth import pictured_labels

    pictured = pictured_labels(web, emb.urls)
    named = [named_class(c) for c in emb.captions]
    truthful = [i for i, (p, n) in enumerate(zip(pictured, named, strict=True)) if p is not None and p == n]
    out: dict[str, Any] = {"pairs_known": sum(p is not None for p in pictured), "truthful_pairs": len(truthful)}
    out["label_oracle"] = label_oracle_report(pictured, named, emb.captions)
    if truthful:
        out["truthful"] = retrieval_report(emb.image[truthful], emb.text[truthful],
                                           [emb.captions[i] for i in truthful], device=device)  # fmt: skip
    return out


def _linear_probe(args: argparse.Namespace, loaded, cfg, device) -> dict[str, Any]:
    import torch

    from clipmodel.eval.linear_probe import linear_probe
    from clipmodel.eval.reports import image_features
    from clipmodel.eval.zeroshot import read_labels

    train_dir, test_dir = args.linear_probe
    train = read_labels(train_dir)
    test = read_labels(test_dir, train.classnames)

    def features(files):
        # Unnormalised, as the paper's probe takes the image tower's output.
        return image_features(loaded.model, files.paths, loaded.resolution, device, cfg.batch_size, cfg.workers,
                              normalize=False)  # fmt: skip

    report = linear_probe(
        features(train), torch.tensor(train.targets), features(test), torch.tensor(test.targets), len(train.classnames)
    )
    return {"train": train_dir, "test": test_dir, **report}


def format_table(results: dict[str, Any]) -> str:
    """A few lines a person reads: one row per set or direction, the headline numbers only."""
    lines = []
    if results.get("model"):
        lines.append(f"model: {results['model']['description']}")
    for folder, r in results.get("zeroshot", {}).items():
        templates = f"{r['templates']} template{'s' if r['templates'] != 1 else ''}"
        lines.append(f"zero-shot {folder} ({r['images']} images, {r['classes']} classes, {templates})")
        lines.append(f"  top1 {r['top1']:.4f}  top5 {r.get('top5', 0):.4f}  mean per class {r['mean_per_class']:.4f}")
        for split, s in r.get("by_split", {}).items():
            lines.append(f"  split {split:<10} top1 {s['top1']:.4f}  ({s['images']} images)")
    for folder, rob in results.get("robustness", {}).items():
        lines.append(f"robustness against {folder}")
        for name, s in rob["sets"].items():
            drop = "" if name == rob["reference"] else f"  drop {s['drop_top1']:+.4f}"
            lines.append(f"  {name:<16} top1 {s['top1']:.4f}{drop}")
    if "retrieval" in results:
        r = results["retrieval"]
        lines.append(f"retrieval {r['source']} ({r['pairs']} pairs, {r['distinct_captions']} distinct captions)")
        for way in ("image_to_text", "text_to_image"):
            recalls = "  ".join(f"{k} {v:.4f}" for k, v in r[way].items() if k.startswith("R@"))
            lines.append(f"  {way.replace('_to_', '->'):<14} {recalls}")
        if truth := r.get("web_truth"):
            lines.append(f"  by the web's truth: {truth['truthful_pairs']} of {r['pairs']} captions name the class "
                         "their picture shows")  # fmt: skip
            for name, title in (("truthful", "on those pairs"), ("label_oracle", "a class-perfect retriever")):
                if name in truth:
                    lines.append(f"  {title}: " + "  ".join(
                        f"{way.replace('_to_', '->')} R@10 {truth[name][way]['R@10']:.4f}"
                        for way in ("image_to_text", "text_to_image")))  # fmt: skip
    if "linear_probe" in results:
        p = results["linear_probe"]
        lines.append(f"linear probe {p['train']} -> {p['test']}: top1 {p['top1']:.4f} at C={p['C']:.3g}"
                     f" (validation {p['val_accuracy']:.4f})")  # fmt: skip
    return "\n".join(lines)
