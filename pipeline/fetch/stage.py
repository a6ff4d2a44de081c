"""The fetch stage in Beam: candidates in, shards written bucket by bucket by the workers that own them."""

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from tqdm import tqdm

from pipeline import fsio
from pipeline.counters import Counters
from pipeline.fetch.bucket import QUEUE_PER_THREAD, fetch_bucket
from pipeline.fetch.http import FetchConfig, Fetcher
from pipeline.fetch.image import ImageConfig, ProcessedImage, process_image
from pipeline.fetch.sample import fetch_or_reject
from pipeline.spill import Spill, read_spilled
from pipeline.write_dataset import BucketResult, bucket
from schemas import fields, reasons

# Hosts whose robots.txt rules and addresses a worker keeps between buckets (a few KB each): bounds its memory
# on lists of millions of hosts, at the price of one more robots.txt for a host met again after the drop.
MAX_HOSTS = 50_000
_CANDIDATE, _REJECTION = "c", "r"  # what a spilled row is: a candidate to fetch, or a rejection to record


class _FetchBuckets(beam.DoFn):
    """Fetches and writes whole buckets, one at a time, on a pool of threads owned by the worker.

    The pool, connection pool and robots cache live for the DoFn instance (built in setup), so connections and
    robots.txt answers are reused across buckets; nothing here depends on teardown for correctness.
    """

    def __init__(self, job: "BucketJob", fetch_cfg: FetchConfig, image_cfg: ImageConfig, threads: int,
                 image_workers: int, progress: bool = False):  # fmt: skip
        self.job = job
        self.fetch_cfg = fetch_cfg
        self.image_cfg = image_cfg
        self.threads = threads
        self.image_workers = image_workers
        self.progress = progress

    def setup(self) -> None:
        self.fetcher = Fetcher(self.fetch_cfg, pool_size=self.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads)
        process_fn = process_image
        self.procs = None
        if self.image_workers > 0:
            # Decoding and resizing hold the GIL for part of their time: in processes they no longer contend with
            # the fetching threads (+25% images/s on 2 cores). Spawned, not forked: this process runs gRPC threads.
            self.procs = ProcessPoolExecutor(self.image_workers, mp_context=multiprocessing.get_context("spawn"))
            process_fn = functools.partial(_in_pool, self.procs)
        self.fetch_one = functools.partial(fetch_or_reject, self.fetcher, image_cfg=self.image_cfg, process=process_fn)
        self.bar = _Progress() if self.progress else None
        self.counters = Counters("fetch")

    def process(self, element: tuple[int, list[str]]) -> Iterator[BucketResult]:
        index, paths = element
        candidates, rejections = [], []
        for kind, row in read_spilled(paths):
            (candidates if kind == _CANDIDATE else rejections).append(row)
        job = self.job
        result = fetch_bucket(job.root, index, job.buckets, job.fingerprint, candidates, rejections, self.fetch_one,
                              self.pool, self.threads * (1 + QUEUE_PER_THREAD), job.first,
                              self.bar.update if self.bar else None)  # fmt: skip
        if self.fetcher.forget_hosts(MAX_HOSTS):  # between buckets: nothing is in flight
            self.counters.inc("host_caches_dropped")
        _release_freed_memory()
        fetched = result.counts.get(reasons.FETCH, {})
        self.counters.inc("kept", result.shard.rows if result.shard else 0)
        for reason, n in fetched.items():
            self.counters.inc(reason, n)
        yield result

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.procs is not None:
            self.procs.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()
        if self.bar is not None:
            self.bar.close()


def _release_freed_memory() -> None:
    """Hand the heap that a bucket's images used and freed back to the OS (glibc only; elsewhere a no-op).

    Dozens of threads decoding images of every size leave glibc's arenas fragmented: measured on 16,000 images, the
    resident size crept ~0.8 MB/s while Python's own heap stayed flat. Trimming after each bucket keeps a long fetch
    at the size of its first buckets.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


class _Progress:
    """A worker's progress line: images done, images/s, success rate. One per worker process (Beam gives no global
    live count on a local runner); a distributed runner shows the `fetch` counters in its own UI instead."""

    def __init__(self) -> None:
        self.ok = self.done = 0
        self.bar = tqdm(desc=f"fetch [{os.getpid()}]", unit="img", mininterval=1.0, smoothing=0.1, leave=True)

    def update(self, ok: bool) -> None:
        self.done += 1
        self.ok += ok
        self.bar.update(1)
        if self.done % 64 == 0:
            self.bar.set_postfix_str(f"ok {100 * self.ok / self.done:.1f}%", refresh=False)

    def close(self) -> None:
        self.bar.set_postfix_str(f"ok {100 * self.ok / max(1, self.done):.1f}%", refresh=False)
        self.bar.close()


def _in_pool(procs: ProcessPoolExecutor, data: bytes, cfg: ImageConfig) -> ProcessedImage:
    return procs.submit(process_image, data, cfg).result()


@dataclass(frozen=True)
class BucketJob:
    """Where and how a job's buckets are written: what every worker needs besides the candidates."""

    root: str  # the dataset folder
    buckets: int  # bucket count: fixed at launch, so a rerun finds the same buckets
    fingerprint: str  # the job config's, for the bucket markers
    work: str  # a folder for spill files, removed by the launcher when the job is done
    first: int = 0  # number of the first new shard (after the shards a new version carries)
    done: frozenset = frozenset()  # buckets an earlier run of the same job completed: skipped

    def pending(self, key: str) -> Iterator[int]:
        index = bucket(key, self.buckets)
        if index not in self.done:
            yield index


class FetchBuckets(beam.PTransform):
    """{"candidates": rows to fetch, "rejected": REJECTION_SCHEMA rows (or a tuple of such PCollections)} -> one
    BucketResult per bucket written.

    Every row goes to the bucket of its key. Only small rows move: they are spilled to files per bucket
    (pipeline.spill), and the worker that owns a bucket fetches its candidates, streams their images into the
    bucket's shard and writes its rejection part (the fetch's rejections and `rejected` of that bucket) and marker.
    Image bytes never cross a shuffle, and a worker holds one bucket's rows and the images in flight. Buckets in
    `job.done` are skipped; FinalizeDataset then writes the manifest.
    """

    def __init__(self, job: BucketJob, fetch_cfg: FetchConfig, image_cfg: ImageConfig, threads: int = 64,
                 image_workers: int = 0, progress: bool = False):  # fmt: skip
        super().__init__()
        self.job = job
        self.fetch_cfg = fetch_cfg
        self.image_cfg = image_cfg
        self.threads = threads
        self.image_workers = image_workers  # processes for decode/resize; 0 does it in the fetching threads
        self.progress = progress  # a progress line per worker on stderr

    def expand(self, inputs: Any) -> beam.PCollection:
        job = self.job

        def keyed(kind: str):
            return lambda row: ((index, (kind, row)) for index in job.pending(row[fields.KEY]))

        rejected = inputs["rejected"]
        rejected = rejected if isinstance(rejected, tuple | list) else (rejected,)
        keyed_rows = [inputs["candidates"] | "BucketCandidates" >> beam.FlatMap(keyed(_CANDIDATE))] + [
            pcoll | f"BucketRejected{i}" >> beam.FlatMap(keyed(_REJECTION)) for i, pcoll in enumerate(rejected)
        ]
        dofn = _FetchBuckets(job, self.fetch_cfg, self.image_cfg, self.threads, self.image_workers, self.progress)
        spilled = tuple(keyed_rows) | "Spill" >> Spill(fsio.join(job.work, "buckets"))
        return spilled | "FetchAndWrite" >> beam.ParDo(dofn)
