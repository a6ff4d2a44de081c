"""The fetch stage in Beam: candidates in, (sample row, image bytes) and rejection rows out, many in flight."""

import functools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from tqdm import tqdm

from pipeline.fetch.http import FetchConfig, Fetcher, fetch_or_reject
from pipeline.fetch.image import ImageConfig, ProcessedImage, process_image
from pipeline.rejection import Rejected, rejection_row

REJECTED = "rejected"


class _FetchBatch(beam.DoFn):
    """Fetches a batch of candidates concurrently on a pool owned by the worker.

    The pool, connection pool and robots cache live for the DoFn instance (built in setup), so connections
    and robots.txt answers are reused across batches; nothing here depends on teardown for correctness.
    """

    def __init__(
        self, fetch_cfg: FetchConfig, image_cfg: ImageConfig, threads: int, image_workers: int, progress: bool = False
    ):
        self.fetch_cfg = fetch_cfg
        self.image_cfg = image_cfg
        self.threads = threads
        self.image_workers = image_workers
        self.progress = progress
        self.kept = Metrics.counter("fetch", "kept")

    def setup(self) -> None:
        self.fetcher = Fetcher(self.fetch_cfg, pool_size=self.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads)
        self.process_fn = process_image
        self.procs = None
        if self.image_workers > 0:
            # Decoding and resizing hold the GIL for part of their time: in processes they no longer contend with
            # the fetching threads (+25% images/s on 2 cores). Spawned, not forked: this process runs gRPC threads.
            self.procs = ProcessPoolExecutor(self.image_workers, mp_context=multiprocessing.get_context("spawn"))
            self.process_fn = functools.partial(_in_pool, self.procs)
        self.bar = _Progress() if self.progress else None

    def process(self, batch: list[dict]) -> Iterator:
        futures = [self.pool.submit(fetch_or_reject, self.fetcher, c, self.image_cfg, self.process_fn) for c in batch]
        # As they complete, not in order: Beam needs no order, and a slow host must not hold back the rest.
        for future in as_completed(futures):
            result = future.result()
            if self.bar is not None:
                self.bar.update(not isinstance(result, Rejected))
            if isinstance(result, Rejected):
                Metrics.counter("fetch", result.reason).inc()
                yield beam.pvalue.TaggedOutput(REJECTED, rejection_row(result.candidate, result.reason, result.detail))
            else:
                self.kept.inc()
                yield result

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.procs is not None:
            self.procs.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()
        if self.bar is not None:
            self.bar.close()


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


class FetchImages(beam.PTransform):
    """Candidates -> `samples` ((SAMPLE_SCHEMA row, image bytes)) and `rejected` (REJECTION_SCHEMA rows).

    Candidates are spread across workers, then batched so each worker keeps `threads` requests in flight.
    """

    def __init__(
        self,
        fetch_cfg: FetchConfig,
        image_cfg: ImageConfig,
        threads: int = 64,
        image_workers: int = 0,
        progress: bool = False,
    ):
        super().__init__()
        self.fetch_cfg = fetch_cfg
        self.image_cfg = image_cfg
        self.threads = threads
        self.image_workers = image_workers  # processes for decode/resize; 0 does it in the fetching threads
        self.progress = progress  # a progress line per worker on stderr

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, candidates: beam.PCollection) -> Any:
        return (
            candidates
            | "Spread" >> beam.Reshuffle()
            # Large batches: a batch ends only when its slowest fetch does, so small ones leave threads idle.
            | "Batch" >> beam.BatchElements(min_batch_size=self.threads * 2, max_batch_size=self.threads * 16)
            | "Fetch"
            >> beam.ParDo(
                _FetchBatch(self.fetch_cfg, self.image_cfg, self.threads, self.image_workers, self.progress)
            ).with_outputs(REJECTED, main="samples")
        )
