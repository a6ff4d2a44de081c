"""Forward throughput of the CLIP encoders on CPU: images/s through encode_image, texts/s through encode_text.

    .venv/bin/python benchmarks/model.py [--models tiny RN50 ViT-B-32] [--batch 32] [--runs 5] [--threads N]

Each model runs eager and `torch.compile`d (inductor), in fp32 under no_grad, after warm-up (which for the compiled
one includes compilation, reported apart). Writes benchmarks/results/model.json: medians and every run. No
side-by-side tool: benchmarks/openclip_parity.py shows open_clip computes the same functions.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clipmodel.factory import count_parameters, create_model

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "model.json"
SOT, EOT = 49406, 49407


def inputs(image_size: int, context: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels, and captions of 5 to 40 words: the lengths alt text has (EOT position varies)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, image_size, image_size, generator=g)  # (B, 3, S, S)
    text = torch.zeros(n, context, dtype=torch.long)  # (B, L)
    for i in range(n):
        length = int(torch.randint(5, 41, (1,), generator=g))
        text[i, 0], text[i, length + 1] = SOT, EOT
        text[i, 1 : length + 1] = torch.randint(1, SOT, (length,), generator=g)
    return images, text


def timed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, runs: int, warmup: int) -> dict:
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn(x)
        warm_s = time.perf_counter() - t0
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            walls.append(time.perf_counter() - t0)
    per_s = [len(x) / w for w in walls]
    return {"warmup_s": warm_s, "median_per_s": statistics.median(per_s), "per_s": per_s}


def bench_model(name: str, batch: int, runs: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    cfg = model.config
    images, text = inputs(cfg.vision.image_size, cfg.text.context_length, batch)
    row: dict = {"model": name, "params": count_parameters(model), "image_size": cfg.vision.image_size}
    for mode in ("eager", "compiled"):
        encode_image, encode_text = model.encode_image, model.encode_text
        if mode == "compiled":
            torch._dynamo.reset()  # each model compiles from scratch, so warmup_s is its compile time
            encode_image, encode_text = torch.compile(encode_image), torch.compile(encode_text)
        img = timed(encode_image, images, runs, warmup)
        txt = timed(encode_text, text, runs, warmup)
        row[mode] = {"images_per_s": img["median_per_s"], "texts_per_s": txt["median_per_s"], "image": img, "text": txt}
        print(f"{name} {mode}: {img['median_per_s']:.1f} images/s, {txt['median_per_s']:.1f} texts/s", flush=True)
    return row


def bench_tokenizer(n: int = 20_000, runs: int = 3) -> dict:
    """Tokenizer captions/s beside the encoders: benchmarks/tokenizer.py's passes (it also compares with open_clip)."""
    import pyarrow.parquet as pq
    from tokenizer import LAION, _medians, make_captions, run_passes  # benchmarks/tokenizer.py, same folder

    from clipmodel.tokenizer import Tokenizer

    real = [t for t in pq.read_table(LAION, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    runs_, _ = run_passes(lambda: Tokenizer().tokenize, real, make_captions(real, n), runs)
    return _medians(runs_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["tiny", "RN50", "ViT-B-32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    # On a machine shared with other jobs, one thread per spare core: an OpenMP thread that waits for a busy core
    # stalls every parallel region (measured here: 2 threads 3x slower than 1 while another job held a core).
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [bench_model(name, args.batch, args.runs, args.warmup) for name in args.models]
    result = {
        "benchmark": "model",
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "settings": vars(args),
        "note": "fp32, no_grad, batch of random images / token ids; medians of `runs` timed calls after `warmup` "
        "calls (for compiled, warmup_s includes compilation). Indicative: the machine was shared with other jobs.",
        "summary": {
            r["model"]: {
                m: {k: round(r[m][k], 1) for k in ("images_per_s", "texts_per_s")} for m in ("eager", "compiled")
            }
            for r in rows
        },
        "tokenizer": bench_tokenizer(),
        "runs": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
