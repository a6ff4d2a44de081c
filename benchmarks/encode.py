"""Encoder throughput and agreement: `wit encode` vs the loop a user writes with open_clip (as clip-retrieval does).

    .venv/bin/python benchmarks/encode.py [--model ViT-B-32] [--samples 1000] [--runs 3] [--openclip-python PY]

Same weights (open_clip's model of the named architecture, randomly initialised and perturbed as in
benchmarks/openclip_parity.py, saved as a state dict and loaded by both), same shards (benchmarks/loader.py's 256 px
JPEGs with LAION captions), same batch size, fp32, 2 reading workers, CPU:

- "wit encode@openclip-torch": clipmodel.embed.encode.encode_dataset (per-shard float16 .npy + metadata Parquet) run by
  the open_clip venv's Python, so both tools use the same torch build: the like-for-like ratio.
- "wit encode": the same in this project's venv (its pinned torch), for reference.
- "open_clip + webdataset": in the open_clip venv, webdataset reads the tars (2 workers, batched), open_clip's
  preprocess (torchvision Resize bicubic + CenterCrop + Normalize) and tokenizer, model.encode_image /
  encode_text with normalize=True, embeddings collected and saved as float16 .npy.

Throughput is samples (image + caption) per second of the whole run after the model is loaded. Agreement: the first
batch of images as open_clip preprocessed them, and their tokens, go through both models; the max absolute
difference of the normalised embeddings must be < 1e-4 in fp32 (the issue's bar). The end-to-end embeddings also
differ by the two resizers' rounding; that difference is reported too (median cosine between the two tools'
embeddings of each sample).

Also: semantic dedup (pipeline.filter.semdedup, what `wit filter` runs) on --semdedup-n random clustered 512-d
embeddings with planted near-copies (target <= 5 minutes for 1M on 2 cores), and search (benchmarks/search_timing.py):
build time, batched queries/s, one-query p50 latency and recall@10 of the flat and IVF-PQ indexes on --search-n
clustered vectors. Writes benchmarks/results/encode.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
sys.path.insert(0, str(REPO))
from loader import make_dataset  # noqa: E402 - benchmarks/loader.py's shards, generated once and cached

WORK = ROOT / "work" / "encode"
# "wit encode@openclip-torch": ours run by the open_clip venv's Python, the like-for-like comparison (same torch).
TOOLS = ("wit encode@openclip-torch", "open_clip + webdataset", "wit encode")
RESULTS = ROOT / "results" / "encode.json"

# Runs in the open_clip venv: save perturbed weights, or encode the shards and time it.
_OPENCLIP_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
import open_clip, webdataset as wds
sys.path.insert(0, sys.argv[1])
from openclip_parity import perturb
mode, name, weights, out = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
torch.set_num_threads(2)
model, _, preprocess = open_clip.create_model_and_transforms(f"{name}-quickgelu", pretrained=None)
if mode == "weights":
    torch.manual_seed(0)
    perturb(model, seed=1)
    torch.save(model.state_dict(), weights)
    sys.exit(0)
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
model.eval()
tokenizer = open_clip.get_tokenizer(f"{name}-quickgelu")
urls, batch, workers = json.loads(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
pipeline = wds.DataPipeline(
    wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(),
    wds.decode("pilrgb"), wds.to_tuple("__key__", "jpg", "txt"), wds.map_tuple(None, preprocess, None),
    wds.batched(batch, partial=True),
)
loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
keys, imgs, txts, first = [], [], [], None
t0 = time.perf_counter()
with torch.no_grad():
    for k, images, captions in loader:
        tokens = tokenizer(list(captions))
        imgs.append(model.encode_image(images, normalize=True).numpy().astype(np.float16))
        txts.append(model.encode_text(tokens, normalize=True).numpy().astype(np.float16))
        keys += list(k)
        if first is None:
            first = (images.numpy(), tokens.numpy(), imgs[-1].astype(np.float32), txts[-1].astype(np.float32))
seconds = time.perf_counter() - t0
np.savez(out / "openclip.npz", keys=np.array(keys), image=np.concatenate(imgs), text=np.concatenate(txts),
         first_images=first[0], first_tokens=first[1])
with torch.no_grad():  # fp32 features of the first batch, unrounded, for the agreement check
    fi = model.encode_image(torch.from_numpy(first[0]), normalize=True).numpy()
    ft = model.encode_text(torch.from_numpy(first[1]), normalize=True).numpy()
np.savez(out / "openclip_first.npz", image=fi, text=ft)
print(json.dumps({"samples": len(keys), "seconds": seconds}))
"""


def _openclip(py: str, mode: str, name: str, weights: Path, out: Path, urls=(), batch=0, workers=0) -> dict | None:
    cmd = [py, "-c", _OPENCLIP_SCRIPT, str(ROOT), mode, name, str(weights), str(out), json.dumps(list(urls)),
           str(batch), str(workers)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if mode == "encode" else None


# `wit encode`'s function, from this checkout, under whichever Python runs it (so it can use open_clip's torch).
_WIT_SCRIPT = r"""
import json, shutil, sys
import torch
sys.path.insert(0, sys.argv[1])
from clipmodel.embed.config import EncodeConfig
from clipmodel.embed.encode import encode_dataset
from clipmodel.inference import load_model
dataset, weights, name, out, batch, workers = sys.argv[2:8]
torch.set_num_threads(2)
shutil.rmtree(out, ignore_errors=True)
loaded = load_model(weights, arch=name, device="cpu")
s = encode_dataset(dataset, loaded, out, EncodeConfig(batch_size=int(batch), workers=int(workers)))
print(json.dumps({"samples": s.samples, "seconds": s.seconds}))
"""


def _ours(py: str, dataset: Path, weights: Path, name: str, out: Path, batch: int, workers: int) -> dict:
    cmd = [py, "-c", _WIT_SCRIPT, str(REPO), str(dataset), str(weights), name, str(out), str(batch), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wit encode failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(weights: Path, name: str, work: Path) -> dict:
    """Both models on the very same preprocessed first batch: the max abs difference of normalised embeddings."""
    import torch.nn.functional as F

    from clipmodel.inference import load_model

    model = load_model(weights, arch=name, device="cpu").model
    batch = np.load(work / "openclip.npz")
    theirs = np.load(work / "openclip_first.npz")
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.from_numpy(batch["first_images"])), dim=-1).numpy()
        txt = F.normalize(model.encode_text(torch.from_numpy(batch["first_tokens"])), dim=-1).numpy()
    return {
        "batch": int(img.shape[0]),
        "max_abs_diff_image": float(np.abs(img - theirs["image"]).max()),
        "max_abs_diff_text": float(np.abs(txt - theirs["text"]).max()),
    }


def _ratio(medians: dict, ours: str) -> float | None:
    theirs = medians.get("open_clip + webdataset")
    return medians[ours] / theirs if ours in medians and theirs else None


def _torch_version(py: str) -> str:
    out = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


def end_to_end_cosine(work: Path) -> dict:
    """Per-sample cosine between the two tools' stored embeddings (float16, different resizers)."""
    from clipmodel.embed.embeddings import load_embeddings

    ours = load_embeddings(work / "wit")
    theirs = np.load(work / "openclip.npz")
    index = {k: i for i, k in enumerate(ours.keys)}
    rows = [index[str(k)] for k in theirs["keys"]]
    img = np.sum(ours.image[rows] * theirs["image"].astype(np.float32), axis=1)
    txt = np.sum(ours.text[rows] * theirs["text"].astype(np.float32), axis=1)
    return {"samples": len(rows), "image_cosine_median": float(np.median(img)), "image_cosine_min": float(img.min()),
            "text_cosine_median": float(np.median(txt)), "text_cosine_min": float(txt.min())}  # fmt: skip


def semdedup_timing(n: int, dim: int = 512) -> dict:
    """SemDeDup over n clustered vectors, 2% of them planted near-copies of others (cosine ~0.995)."""
    from search_timing import clustered_vectors

    from pipeline.filter.semdedup import SemDedupConfig, semdedup

    rng = np.random.default_rng(1)
    x = clustered_vectors(n, dim, clusters=1024, spread=0.8, seed=1)
    copies = rng.choice(n, size=n // 50, replace=False)
    sources = rng.integers(n, size=len(copies))
    x[copies] = x[sources] + rng.standard_normal((len(copies), dim)).astype(np.float32) * (0.1 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keys = [f"{i:08d}" for i in range(n)]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    result = semdedup(x, keys, SemDedupConfig(), timings=timings)
    seconds = time.perf_counter() - start
    duplicates = int(np.sum(~result.kept))
    return {"rows": n, "dim": dim, "seconds": seconds, "phases_s": timings, "planted_copies": len(copies),
            "duplicates_found": duplicates, "target_s": 300}  # fmt: skip


def search_timing(n: int, dim: int = 512) -> list[dict]:
    from dataclasses import asdict

    from search_timing import clustered_vectors, time_search

    x = clustered_vectors(n + 1000, dim)
    return [asdict(t) for t in time_search(x[:n], x[n:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="an OpenAI architecture open_clip also names")
    parser.add_argument("--samples", type=int, default=1000, help="dataset size (benchmarks/loader.py's shards)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--openclip-python", default="/work/openclip_venv/bin/python")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--semdedup-n", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--search-n", type=int, default=200_000, help="0: skip")
    args = parser.parse_args()
    torch.set_num_threads(2)
    WORK.mkdir(parents=True, exist_ok=True)
    dataset = make_dataset(args.samples)
    manifest = json.loads((dataset / "manifest.json").read_text())
    urls = [str(dataset / s["tar"]["path"]) for s in manifest["shards"]]
    weights = WORK / f"{args.model}.pt"
    if not weights.exists():
        _openclip(args.openclip_python, "weights", args.model, weights, WORK)

    runs = []
    for r in range(args.runs):
        for tool in args.tools[:: 1 if r % 2 == 0 else -1]:
            load = os.getloadavg()[0]
            if tool.startswith("wit encode"):
                py = args.openclip_python if tool == "wit encode@openclip-torch" else sys.executable
                result = _ours(py, dataset, weights, args.model, WORK / "wit", args.batch_size, args.workers)
            else:
                result = _openclip(args.openclip_python, "encode", args.model, weights, WORK, urls, args.batch_size,
                                   args.workers)  # fmt: skip
            result |= {"tool": tool, "run": r, "samples_per_s": result["samples"] / result["seconds"],
                       "load_before": load}  # fmt: skip
            print(json.dumps(result), flush=True)
            runs.append(result)

    def med(tool: str) -> float:
        return statistics.median(x["samples_per_s"] for x in runs if x["tool"] == tool)

    medians = {t: med(t) for t in args.tools}
    summary = {
        "benchmark": "encode",
        "what": f"image + caption embeddings/s of {args.samples} samples (256 px JPEGs, LAION captions), {args.model} "
        f"fp32 on CPU, batch {args.batch_size}, {args.workers} reading workers, same weights in both tools",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": vars(args),
        "median_samples_per_s": medians,
        "torch": {"wit": torch.__version__, "openclip_venv": _torch_version(args.openclip_python)},
        "ratio_wit_over_openclip_same_torch": _ratio(medians, "wit encode@openclip-torch"),
        "ratio_wit_over_openclip": _ratio(medians, "wit encode"),
        "agreement_same_input_fp32": agreement(weights, args.model, WORK),
        "agreement_target": 1e-4,
        "end_to_end_cosine": end_to_end_cosine(WORK),
        "load_average_median": statistics.median(x["load_before"] for x in runs),
        "runs": runs,
    }
    if args.semdedup_n:
        summary["semdedup"] = semdedup_timing(args.semdedup_n)
        print(json.dumps(summary["semdedup"]), flush=True)
    if args.search_n:
        summary["search"] = search_timing(args.search_n)
        print(json.dumps(summary["search"]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    keys = ("median_samples_per_s", "ratio_wit_over_openclip_same_torch", "agreement_same_input_fp32")
    print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
    main()
