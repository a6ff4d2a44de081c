"""`wit build` on one machine's runners and on a Dask cluster of 1 and 2 workers: wall time, speed-up, peak RSS.

    .venv/bin/python benchmarks/distributed.py [--candidates 10000] [--runs 3] [--setups fnapi,fnapi-2,dask-1,dask-2]

The same URL list for every setup: `--candidates` distinct photos (benchmarks/fetch.py's generator, cached) served
by nginx from files, every one kept, so the build fetches, decodes, resizes and writes each image (`--no-balance`:
the synthetic captions name no query-list entry often enough to matter). The setups:

- fnapi: the default in-process FnApiRunner (its fetching threads already use both cores);
- fnapi-2: FnApiRunner with 2 SDK worker processes (--direct_running_mode=multi_processing);
- dask-1, dask-2: `--runner=DaskRunner` against a `dask scheduler` and 1 or 2 `dask worker --nthreads 1`
  processes started for each run (outside the timed command, as a user's cluster would already be up), worker i
  pinned to core i (`taskset`): a worker stands for one machine's CPU. Unpinned, one worker's 64 fetching threads
  already use both cores here, so a second worker on the same two cores could only share them, which says nothing
  of how the job spreads over machines. The launcher, scheduler and nginx float over both cores.

Peak RSS is sampled from /proc every 0.2 s: of the `wit build` process tree (the launcher; for fnapi the whole job),
and of each Dask worker's process tree (nanny and worker). The ratio the issue asks for is dask-2 over dask-1.
Results go to benchmarks/results/distributed.json, medians over `--runs`.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

# This file's name shadows the `distributed` package that dask.distributed imports: look in its folder last.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import scale  # noqa: E402 - after the path is set
from fetch import BIN, _tree_rss_mib, image_folder, make_images, timed, tree_total
from nginx import Nginx  # noqa: E402

ROOT = Path(__file__).resolve().parent


def _tests_module(name: str):
    """A helper module of tests/, by its file: tests/ on the path would shadow our packages with its own folders."""
    spec = importlib.util.spec_from_file_location(name, ROOT.parent / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DaskCluster = _tests_module("dask_cluster").DaskCluster
WORK = ROOT / "work" / "distributed"
RESULTS = ROOT / "results" / "distributed.json"
TARGETS = {"dask_2_over_1_at_least": 1.6}
SETUPS = ("fnapi", "fnapi-2", "dask-1", "dask-2")


class Cluster(DaskCluster):
    """The tests' loopback cluster, worker i pinned to core i; the peak RSS and CPU of each worker's process tree."""

    def __init__(self, workers: int):
        # A worker stands for one machine's worth of CPU. Unpinned, one worker's fetching threads already use both
        # cores of this machine, and a second worker could only compete with it.
        self.cores = sorted(os.sched_getaffinity(0))
        super().__init__(workers, folder=WORK)
        self.peaks = [0.0] * workers
        self.cpu_s = [0.0] * workers
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def launcher(self, name: str) -> list[str]:
        return ["taskset", "-c", str(self.cores[int(name.removeprefix("w")) % len(self.cores)])]

    def _sample(self) -> None:
        while not self._stop.is_set():
            for i, proc in enumerate(self.workers):
                self.peaks[i] = max(self.peaks[i], _tree_rss_mib(proc.pid))
                self.cpu_s[i] = max(self.cpu_s[i], _tree_cpu_s(proc.pid))
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join()
        super().close()


def _cpu_s(entry: Path) -> tuple[int, float]:
    stat = (entry / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process and its descendants so far, from /proc/<pid>/stat."""
    return tree_total(root, _cpu_s)


def build_cmd(urls: Path, out: Path) -> list[str]:
    return [str(BIN / "wit"), "build", "--candidates", str(urls), "--out", str(out), "--allow-private",
            "--threads", "64", "--image-size", "256", "--resize-mode", "keep_ratio", "--samples-per-shard", "250",
            "--no-balance", "--no-progress"]  # fmt: skip


def run_setup(setup: str, urls: Path, n: int, env: dict) -> dict:
    out = WORK / f"out-{setup}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = build_cmd(urls, out)
    cluster = None
    if setup == "fnapi-2":
        cmd += ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    elif setup.startswith("dask-"):
        cluster = Cluster(int(setup.split("-")[1]))
        cmd += ["--runner=DaskRunner", f"--dask_client_address={cluster.address}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        wall, rss = timed(cmd, env, log=WORK / "last-stderr.log")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the cluster's processes are reaped
    finally:
        if cluster:
            cluster.close()
    kept = json.loads((out / "manifest.json").read_text())["rows"]
    shutil.rmtree(out, ignore_errors=True)
    result = {"setup": setup, "n": n, "wall_s": wall, "kept": kept, "candidates_per_s": n / wall}
    result["launcher_peak_rss_mib"] = rss
    result["launcher_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if cluster:
        result["worker_peak_rss_mib"] = cluster.peaks
        result["worker_cpu_s"] = cluster.cpu_s
    return result


def _median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("wall_s", "candidates_per_s", "launcher_peak_rss_mib"):
        out[key] = statistics.median(r[key] for r in runs)
    if "worker_peak_rss_mib" in out:
        workers = len(out["worker_peak_rss_mib"])
        out["worker_peak_rss_mib"] = [
            statistics.median(r["worker_peak_rss_mib"][i] for r in runs) for i in range(workers)
        ]
    out["runs"] = len(runs)
    out["wall_s_each"] = [r["wall_s"] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    scale.WORK.mkdir(parents=True, exist_ok=True)  # where scale.url_list writes
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    images = make_images(args.candidates)
    runs: dict[str, list[dict]] = {s: [] for s in setups}
    with Nginx(image_folder(args.candidates)) as server:
        urls = scale.url_list(server.base_url, args.candidates, args.candidates, [c for _, c in images])
        for _ in range(args.runs):  # interleaved: a slow spell of this noisy machine hits every setup alike
            for setup in setups:
                runs[setup].append(run_setup(setup, urls, args.candidates, env))
                print(json.dumps(runs[setup][-1]), flush=True)
    results = {s: _median(r) for s, r in runs.items()}
    ratios = {}
    if "dask-1" in results and "dask-2" in results:
        ratios["dask_2_over_1"] = results["dask-1"]["wall_s"] / results["dask-2"]["wall_s"]
    if "fnapi" in results:
        for s in setups:
            if s != "fnapi":
                ratios[f"{s}_over_fnapi"] = results["fnapi"]["wall_s"] / results[s]["wall_s"]
    summary = {
        "benchmark": "distributed",
        "what": "wit build --no-balance of a URL list served by nginx from files (every image distinct and kept, "
        "256 px keep_ratio) on the default FnApiRunner, FnApiRunner with 2 worker processes, and the DaskRunner "
        "on a loopback cluster of 1 and 2 single-thread workers; medians of interleaved runs",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": f"nginx {Nginx.version()}",
        "candidates": args.candidates,
        "results": list(results.values()),
        "speedups": ratios,
        "targets": TARGETS,
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    sys.exit(main())
