"""CLIP tokenizer throughput (captions/s, one thread): clipmodel.tokenizer vs open_clip's SimpleTokenizer.

    .venv/bin/python benchmarks/tokenizer.py [--n 20000] [--runs 5] [--openclip-python /work/openclip_venv/bin/python]

The captions are the LAION sample's 1,000 real alt texts and N distinct variants of them (words shuffled, dropped,
re-cased, a number or a word added; the non-ASCII share stays the sample's). Each run, in one process per tool:
  cold_real  a new tokenizer on the 1,000 real captions: every word is new to it (the worst case);
  cold       a new tokenizer on the N variants: its word cache fills as it goes;
  warm       the same tokenizer on the N variants again.
Each pass calls the tool's batch call (`Tokenizer.tokenize` / `SimpleTokenizer.__call__`) on the whole list and
is timed alone; loading the vocabulary is timed apart. open_clip runs in its own venv (--openclip-python) if that
python can import it; its ids must equal ours on every caption, or the script fails.
Writes benchmarks/results/tokenizer.json: medians of the runs, the ratio to open_clip, and every run.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "tokenizer"
RESULTS = ROOT / "results" / "tokenizer.json"
LAION = ROOT.parent.parent / "shared" / "data" / "laion_sample_1000.parquet"
OPENCLIP_PYTHON = Path("/work/openclip_venv/bin/python")
PASSES = ("cold_real", "cold", "warm")
_EXTRA = "new vintage red blue small large free best hd photo set for sale the with and 2019".split()


def make_captions(real: list[str], n: int, seed: int = 0) -> list[str]:
    """n distinct variants of the real captions, as other pages might word them."""
    rng, seen, out = random.Random(seed), set(real), []
    while len(out) < n:
        words, r = rng.choice(real).split(), rng.random()
        if r < 0.3:
            rng.shuffle(words)
        elif r < 0.5 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif r < 0.7:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_EXTRA))
        elif r < 0.8:
            words = [w.upper() if rng.random() < 0.5 else w.title() for w in words]
        else:
            words.append(str(rng.randrange(10_000)))
        caption = " ".join(words)
        if caption not in seen:
            seen.add(caption)
            out.append(caption)
    return out


def _timed(fn, arg):
    t0 = time.perf_counter()
    result = fn(arg)
    return time.perf_counter() - t0, result


def run_passes(make, real: list[str], varied: list[str], runs: int) -> tuple[list[dict], dict]:
    """Time the three passes `runs` times with tokenizers from `make()`; the last run's ids of each list."""
    results, ids = [], {}
    for run in range(runs):
        load, first = _timed(lambda _: make(), None)
        cold_real, ids["real"] = _timed(first, real)
        tokenizer = make()
        cold, ids["varied"] = _timed(tokenizer, varied)
        warm, again = _timed(tokenizer, varied)
        assert (again == ids["varied"]).all()
        secs = {"cold_real": cold_real, "cold": cold, "warm": warm}
        rates = {p: (len(real) if p == "cold_real" else len(varied)) / s for p, s in secs.items()}
        results.append({"run": run, "load_s": load, "seconds": secs, "captions_per_s": rates})
        print(json.dumps(results[-1]), flush=True)
    return results, ids


def _child_openclip(work: Path, runs: int) -> None:
    """Runs in the open_clip venv: only the stdlib, numpy, torch and open_clip here."""
    import numpy as np
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    torch.set_num_threads(1)
    data = json.loads((work / "captions.json").read_text())
    results, ids = run_passes(SimpleTokenizer, data["real"], data["varied"], runs)
    np.save(work / "openclip_real.npy", ids["real"].numpy())
    np.save(work / "openclip_varied.npy", ids["varied"].numpy())
    version = __import__("open_clip").__version__
    (work / "openclip.json").write_text(json.dumps({"version": version, "torch": torch.__version__, "runs": results}))


def run_openclip(python: Path, real: list[str], varied: list[str], runs: int, ours: dict) -> dict | None:
    """open_clip's runs and version, after checking its ids equal `ours`; None if that python has no open_clip."""
    if not python.is_file() or subprocess.run([python, "-c", "import open_clip"], capture_output=True).returncode:
        print(f"open_clip not importable with {python}: no side-by-side", file=sys.stderr)
        return None
    import numpy as np

    (WORK / "captions.json").write_text(json.dumps({"real": real, "varied": varied}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([python, __file__, "--child-openclip", "--runs", str(runs)], check=True, env=env)
    for name in ("real", "varied"):
        theirs = np.load(WORK / f"openclip_{name}.npy")
        if not np.array_equal(theirs, ours[name].numpy()):
            rows = np.nonzero((theirs != ours[name].numpy()).any(axis=1))[0]
            raise AssertionError(f"ids differ from open_clip's on {len(rows)} {name} captions, e.g. row {rows[0]}")
    return json.loads((WORK / "openclip.json").read_text())


def _medians(runs: list[dict]) -> dict:
    rates = {p: statistics.median(r["captions_per_s"][p] for r in runs) for p in PASSES}
    return rates | {"load_s": statistics.median(r["load_s"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="distinct caption variants in the cold and warm passes")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--openclip-python", type=Path, default=OPENCLIP_PYTHON)
    parser.add_argument("--child-openclip", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.child_openclip:
        return _child_openclip(WORK, args.runs)

    import pyarrow.parquet as pq
    import torch

    from clipmodel.tokenizer import Tokenizer

    torch.set_num_threads(1)
    real = [t for t in pq.read_table(LAION, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    varied = make_captions(real, args.n)
    load = os.getloadavg()[0]  # other work on a shared host shows up here first
    ours, ids = run_passes(lambda: Tokenizer().tokenize, real, varied, args.runs)
    openclip = run_openclip(args.openclip_python, real, varied, args.runs, ids)
    summary = {
        "benchmark": "tokenizer",
        "what": "captions/s through CLIP tokenization to (N, 77) int64 ids, one thread; cold_real: a new tokenizer "
        "on the 1,000 real LAION captions; cold: a new tokenizer on N distinct variants; warm: the same again",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"n": args.n, "runs": args.runs, "real_captions": len(real), "loadavg_before": load},
        "non_ascii_share": sum(not c.isascii() for c in varied) / len(varied),
        "median_captions_per_s": {"clipmodel": _medians(ours)},
        "target_captions_per_s": 20_000,
        "same_ids_as_open_clip": None,
        "runs": {"clipmodel": ours},
    }
    if openclip:
        theirs = _medians(openclip["runs"])
        summary["median_captions_per_s"]["open_clip"] = theirs
        summary["ratio_clipmodel_over_open_clip"] = {p: summary["median_captions_per_s"]["clipmodel"][p] / theirs[p]
                                                     for p in PASSES}  # fmt: skip
        summary["open_clip"] = {"version": openclip["version"], "torch": openclip["torch"]}
        summary["same_ids_as_open_clip"] = True  # run_openclip raises otherwise
        summary["runs"]["open_clip"] = openclip["runs"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    keys = ("median_captions_per_s", "ratio_clipmodel_over_open_clip", "same_ids_as_open_clip")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))


if __name__ == "__main__":
    main()
