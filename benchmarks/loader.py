"""Training loader vs the webdataset library: same shards, decode, resize, crop, normalize, tokenize, workers, batch.

    .venv/bin/python benchmarks/loader.py [--samples 4000] [--runs 3] [--workers 2] [--batch-size 128]

The shards are our dataset layout (tar + Parquet + manifest) holding synthetic photos stored at 256 px on the
shorter side (as img2dataset's keep_ratio 256 writes them) with real LAION captions. Three loaders, alternating:

- "wit loader": clipmodel.data.loader.make_loader, train mode (shard + sample shuffle, random crop).
- "webdataset": the pipeline open_clip builds for training (shuffle shards, split by worker, tarfile_to_samples,
  shuffle samples, decode("pilrgb"), rename, map_dict(preprocess, tokenize), to_tuple, batched), with the
  torchvision transform it would use (Resize(R, bicubic), RandomCrop(R), ToTensor, Normalize) written out in PIL
  and torch, since torchvision is not installed here.
- "webdataset + wit transform": the same pipeline with our per-sample transform instead (reduced-scale decode,
  box resampling), to show how much of the difference is the transform and how much the pipeline.

Writes benchmarks/results/loader.json: samples/s per run, medians, ratios, load averages. The machine is shared, so
numbers are indicative; the load average around each run is recorded.
"""

import argparse
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
WORK = ROOT / "work" / "loader"
RESULTS = ROOT / "results" / "loader.json"
LAION = Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent.parent / "shared" / "data")) / "laion_sample_1000.parquet"
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def _photo(i: int) -> bytes:
    """A synthetic-web picture at 256 px on its shorter side, with sensor-like grain, as a q90 JPEG."""
    from synthweb.draw import Drawing, render

    rng = np.random.default_rng(i)
    long = int(rng.integers(256, 400))
    w, h = (long, 256) if i % 3 else (256, long)
    d = Drawing(COLOURS[i % 6], SHAPES[(i // 6) % 6], ("solid", "striped", "dotted")[i % 3],
                ("white", "noise", "gradient")[i % 3], "medium", "photo", w, h, seed=i)  # fmt: skip
    pixels = np.asarray(render(d), dtype=np.int16) + rng.integers(-5, 6, size=(h, w, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_dataset(n: int) -> Path:
    """Our dataset of n samples in shards of 500, written once with the project's writer and cached."""
    from multiprocessing import Pool

    from pipeline.shards import DatasetWriter
    from schemas import fields

    path = WORK / f"dataset-{n}"
    if (path / "manifest.json").exists():
        return path
    captions = pq.read_table(LAION, columns=["TEXT"]).column("TEXT").to_pylist()
    with Pool(os.cpu_count()) as pool:
        images = pool.map(_photo, range(n), chunksize=32)
    with DatasetWriter(path, samples_per_shard=500) as writer:
        for i, data in enumerate(images):
            row = {fields.KEY: f"{i:08d}", fields.URL: f"http://bench.test/{i}.jpg", fields.IMAGE_FORMAT: "jpg"}
            writer.add(row | {fields.CAPTION: captions[i % len(captions)]}, data)
    return path


def tokenizer():
    """The project's CLIP tokenizer when it is there; else a simple fast stand-in (reported in the results)."""
    try:
        from clipmodel.tokenizer import tokenize

        tokenize(["warm up"])  # workers fork from here: both loaders start with the merges loaded
        return tokenize, "clipmodel.tokenizer (CLIP BPE)"
    except ImportError:

        def tokenize(texts: list[str]) -> torch.Tensor:
            out = torch.zeros((len(texts), 77), dtype=torch.long)
            for row, text in enumerate(texts):
                ids = [hash(w) % 49000 for w in text.lower().split()][:75]
                out[row, : len(ids) + 2] = torch.tensor([49406, *ids, 49407])
            return out

        return tokenize, "stand-in whitespace hashing tokenizer"


class TorchvisionLike:
    """Resize(R, bicubic) + RandomCrop(R) + ToTensor + Normalize(CLIP), step by step as torchvision does them."""

    def __init__(self, resolution: int):
        self.r = resolution
        self.rng = random.Random()

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        size = (self.r, int(self.r * h / w)) if w <= h else (int(self.r * w / h), self.r)
        img = img.resize(size, Image.Resampling.BICUBIC)
        x0, y0 = self.rng.randint(0, size[0] - self.r), self.rng.randint(0, size[1] - self.r)
        img = img.crop((x0, y0, x0 + self.r, y0 + self.r))
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()  # (3, R, R) uint8
        return x.float().div(255).sub_(MEAN).div_(STD)  # (3, R, R)


class WitTransform:
    """Our transform per sample, on the undecoded bytes (it needs them for the reduced-scale decode)."""

    def __init__(self, resolution: int):
        self.r = resolution
        self.rng = random.Random()

    def __call__(self, data: bytes) -> torch.Tensor:
        from clipmodel.transform import load, normalize

        return normalize(load(data, self.r, (self.rng.random(), self.rng.random()))[None])[0]


def webdataset_loader(urls: list[str], args, resolution: int, tokenize, wit_transform: bool):
    import webdataset as wds

    def tok(text: str) -> torch.Tensor:
        return tokenize([text])[0]  # open_clip: tokenizer(text)[0]

    stages = [
        wds.SimpleShardList(urls),
        wds.shuffle(bufsize=100, initial=100),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=args.shuffle_buffer, initial=args.shuffle_buffer),
    ]
    if wit_transform:
        stages += [wds.rename(image="jpg;png;jpeg;webp", text="txt"), wds.map_dict(text=bytes.decode)]
        stages += [wds.map_dict(image=WitTransform(resolution), text=tok, handler=wds.warn_and_continue)]
    else:
        stages += [wds.decode("pilrgb", handler=wds.warn_and_continue)]
        stages += [wds.rename(image="jpg;png;jpeg;webp", text="txt")]
        stages += [wds.map_dict(image=TorchvisionLike(resolution), text=tok, handler=wds.warn_and_continue)]
    stages += [wds.to_tuple("image", "text"), wds.batched(args.batch_size, partial=False)]
    return wds.WebLoader(wds.DataPipeline(*stages), batch_size=None, num_workers=args.workers)


def run(tool: str, dataset: Path, urls: list[str], args, resolution: int, tokenize, seed: int) -> dict:
    from clipmodel.data.loader import make_loader

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if tool == "wit loader":
        loader = make_loader(str(dataset), batch_size=args.batch_size, resolution=resolution, tokenize=tokenize,
                             workers=args.workers, seed=seed, shuffle_buffer=args.shuffle_buffer)  # fmt: skip
    else:
        loader = webdataset_loader(urls, args, resolution, tokenize, wit_transform=tool != "webdataset")
    samples = 0
    for batch in loader:
        images, tokens = batch[0], batch[1]
        assert images.shape[1:] == (3, resolution, resolution) and tokens.shape[1] == 77
        samples += images.shape[0]
    wall = time.perf_counter() - t0
    del loader
    return {"tool": tool, "resolution": resolution, "samples": samples, "wall_s": wall,
            "samples_per_s": samples / wall, "load_before": load_before, "load_after": os.getloadavg()[0]}  # fmt: skip


TOOLS = ("wit loader", "webdataset", "webdataset + wit transform")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only counts; workers get one thread each either way

    dataset = make_dataset(args.samples)
    manifest = json.loads((dataset / "manifest.json").read_text())
    urls = [str(dataset / s["tar"]["path"]) for s in manifest["shards"]]
    tokenize, tokenizer_name = tokenizer()
    runs = []
    for resolution in args.resolutions:
        for r in range(args.runs):
            # Alternate the order, so no tool always meets a warm (or cold) page cache or a quiet machine.
            for tool in TOOLS if r % 2 == 0 else TOOLS[::-1]:
                result = run(tool, dataset, urls, args, resolution, tokenize, seed=r) | {"run": r}
                print(json.dumps(result), flush=True)
                runs.append(result)

    def med(tool: str, resolution: int) -> float:
        return statistics.median(
            x["samples_per_s"] for x in runs if x["tool"] == tool and x["resolution"] == resolution
        )

    medians = {str(res): {t: med(t, res) for t in TOOLS} for res in args.resolutions}
    sizes = sorted(s["tar"]["bytes"] for s in manifest["shards"])
    summary = {
        "benchmark": "loader",
        "what": f"samples/s reading {args.samples} samples (256 px JPEG q90, LAION captions) from our shards into "
        f"(B,3,R,R) CLIP-normalized float batches + (B,77) tokens, train mode (shuffle, random crop), "
        f"{args.workers} DataLoader workers, batch {args.batch_size}, sample shuffle buffer {args.shuffle_buffer}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "shared machine: other jobs ran alongside; numbers are indicative, see load_before/load_after",
        "tokenizer": tokenizer_name,
        "dataset": {"samples": manifest["rows"], "shards": len(sizes), "shard_bytes_median": sizes[len(sizes) // 2]},
        "settings": vars(args),
        "median_samples_per_s": medians,
        "ratio_wit_over_webdataset": {res: m["wit loader"] / m["webdataset"] for res, m in medians.items()},
        "ratio_wit_over_webdataset_with_wit_transform": {
            res: m["wit loader"] / m["webdataset + wit transform"] for res, m in medians.items()
        },
        "load_average_median": statistics.median(x["load_before"] for x in runs),
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    keys = ("median_samples_per_s", "ratio_wit_over_webdataset", "ratio_wit_over_webdataset_with_wit_transform")
    print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
    main()
