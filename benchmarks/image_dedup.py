"""Image dedup at scale: near-duplicate groups of N random-ish 64-bit phashes, in one process and through Beam.

    .venv/bin/python benchmarks/image_dedup.py [--n 1000000] [--workers 2] [--full]

Writes benchmarks/results/image_dedup.json: seconds for the union-find reference (dedup_images_pure) and for the
Beam near path (NearPairs + ConnectedComponents on FnApiRunner), the groups each found (they must agree), and with
--full the whole DedupImages transform over sample rows. Target from the issue: 1M hashes in <= 60 s on 2 cores.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.curate.components import ConnectedComponents
from pipeline.curate.image_dedup import DedupImages, ImageDedupConfig, dedup_images_pure
from pipeline.curate.lsh import NearPairs
from schemas import fields

RESULTS = Path(__file__).resolve().parent / "results" / "image_dedup.json"
_CHUNK = 50_000


def random_ish_hashes(n: int, seed: int = 0, k: int = 4) -> np.ndarray:
    """n phashes: uniform at random, but 10% near-copies (1..k+2 bits off) of others and 2% exact copies."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    near = rng.choice(n, n // 10, replace=False)
    flips = np.zeros(len(near), np.uint64)
    for _ in range(k + 2):  # up to k+2 random bits (a repeated bit cancels: distances spread over 0..k+2)
        bit = rng.integers(0, 64, len(near), dtype=np.uint64)
        flips ^= np.where(rng.random(len(near)) < 0.6, np.uint64(1) << bit, np.uint64(0))
    hashes[near] = hashes[rng.integers(0, n, len(near))] ^ flips
    same = rng.choice(n, n // 50, replace=False)
    hashes[same] = hashes[rng.integers(0, n, len(same))]
    return hashes


# Bare `tuple`: a typed int would make Beam pick VarIntCoder, which cannot hold a uint64 phash.
def _chunk(start: int, hashes: np.ndarray) -> list[tuple]:
    return [(f"{i:09d}", h) for i, h in enumerate(hashes[start : start + _CHUNK].tolist(), start)]


def _rows(start: int, hashes: np.ndarray) -> list[dict]:
    return [
        {fields.KEY: key, fields.SHA256: None, fields.PHASH: h, fields.URL: "u"} for key, h in _chunk(start, hashes)
    ]


def _options(workers: int) -> PipelineOptions:
    mode = "multi_processing" if workers > 1 else "in_memory"
    return PipelineOptions(runner="FnApiRunner", direct_num_workers=workers, direct_running_mode=mode)


def time_pure(hashes: np.ndarray, cfg: ImageDedupConfig) -> dict:
    rows = [r for start in range(0, len(hashes), _CHUNK) for r in _rows(start, hashes)]
    t = time.perf_counter()
    result = dedup_images_pure(rows, cfg)
    return {"seconds": time.perf_counter() - t, "grouped": len(result.groups), "kept": len(result.kept)}


def time_beam_near(hashes: np.ndarray, cfg: ImageDedupConfig, workers: int, out: Path) -> dict:
    """The near path alone: (key, phash) in, (key, group) out; the input is generated inside the pipeline so that
    nothing of size N is pickled into the pipeline graph."""
    t = time.perf_counter()
    with beam.Pipeline(options=_options(workers)) as p:
        _ = (
            p
            | beam.Create(range(0, len(hashes), _CHUNK))
            | beam.Reshuffle()
            | beam.FlatMap(_chunk, hashes)
            | NearPairs(cfg.k, cfg.bucket_bits)
            | ConnectedComponents(cfg.rounds, cfg.fallback_cap, cfg.partitions)
            | beam.combiners.Count.Globally()
            | beam.Map(lambda n: out.write_text(str(n)))
        )
    return {"seconds": time.perf_counter() - t, "grouped": int(out.read_text())}


def time_beam_full(hashes: np.ndarray, cfg: ImageDedupConfig, workers: int, out: Path) -> dict:
    t = time.perf_counter()
    with beam.Pipeline(options=_options(workers)) as p:
        result = (
            p | beam.Create(range(0, len(hashes), _CHUNK)) | beam.Reshuffle() | beam.FlatMap(_rows, hashes)
        ) | DedupImages(cfg)
        _ = result.kept | beam.combiners.Count.Globally() | beam.Map(lambda n: out.write_text(str(n)))
    return {"seconds": time.perf_counter() - t, "kept": int(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time DedupImages over sample rows")
    args = parser.parse_args()
    cfg = ImageDedupConfig(k=4, exact=False, bucket_bits=8)
    hashes = random_ish_hashes(args.n)
    work = Path(__file__).resolve().parent / "work" / "image_dedup"
    work.mkdir(parents=True, exist_ok=True)
    summary = {
        "n": args.n,
        "k": cfg.k,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    summary["pure"] = time_pure(hashes, cfg)
    print(json.dumps({"pure": summary["pure"]}), flush=True)
    summary["beam_near"] = time_beam_near(hashes, cfg, args.workers, work / "near.txt")
    print(json.dumps({"beam_near": summary["beam_near"]}), flush=True)
    if args.full:
        summary["beam_full"] = time_beam_full(hashes, cfg, args.workers, work / "full.txt")
        print(json.dumps({"beam_full": summary["beam_full"]}), flush=True)
    summary["groups_agree"] = summary["pure"]["grouped"] == summary["beam_near"]["grouped"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
