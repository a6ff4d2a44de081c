"""One bucket fetched and written by the worker that owns it: its candidates in, its shard and rejection part out.

Fetches finish in any order, but a shard must hold its samples in key order (so its bytes never depend on timing).
Holding a shard's images until the last fetch ends would cost a shard's worth of memory, and writing in key order
as they come would stall every thread behind one slow host. So each finished image goes at once to a spool file on
the worker's local disk, in completion order, and the tar is written from it in key order at the end: memory holds
the bucket's rows and the images in flight, never the shard.
"""

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait

from pipeline.rejection import Rejected, rejection_row
from pipeline.shards import write_shard_from
from pipeline.spill import Spool
from pipeline.write_dataset import BucketResult, write_bucket_files
from schemas import fields

# Candidates queued on the pool beyond the threads: enough that a thread never waits for work, few enough that
# finished results are taken off the futures (and spooled) at once.
QUEUE_PER_THREAD = 2


FetchOne = Callable[[dict], "tuple[dict, bytes] | Rejected"]


def fetch_into(
    candidates: Iterable[dict],
    fetch: FetchOne,
    pool: Executor,
    spool: Spool,
    in_flight: int,
    on_result: Callable[[bool], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Fetch every candidate on `pool` with at most `in_flight` queued: (sample rows, rejection rows).

    Each sample's image goes to `spool` under its key as soon as it is done; every candidate gets exactly one
    outcome. `on_result(ok)` is told of each, for a progress line.
    """
    rows: list[dict] = []
    rejected: list[dict] = []
    pending: set[Future] = set()

    def take(done: set[Future]) -> None:
        for future in done:
            result = future.result()
            ok = not isinstance(result, Rejected)
            if ok:
                row, image = result
                spool.put(row[fields.KEY], image)
                rows.append(row)
            else:
                rejected.append(rejection_row(result.candidate, result.reason, result.detail))
            if on_result is not None:
                on_result(ok)

    for candidate in candidates:
        if len(pending) >= in_flight:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            take(done)
        pending.add(pool.submit(fetch, candidate))
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        take(done)
    return rows, rejected


def fetch_bucket(
    root: str,
    index: int,
    buckets: int,
    fingerprint: str,
    candidates: Iterable[dict],
    rejections: Iterable[dict],
    fetch: FetchOne,
    pool: Executor,
    in_flight: int,
    first: int = 0,
    on_result: Callable[[bool], None] | None = None,
) -> BucketResult:
    """Fetch a bucket's candidates and write its shard (key order), its rejection part (with `rejections`, the
    bucket's candidates rejected before the fetch) and its marker last. Rerunning it rewrites the same bytes."""
    # Key order in, too: hosts are then interleaved as the keys' hashes spread them, not clustered as a list orders
    # them, so per-host limits rarely leave threads idle.
    ordered = sorted(candidates, key=lambda c: str(c[fields.KEY]))
    with Spool() as spool:
        rows, rejected = fetch_into(ordered, fetch, pool, spool, in_flight, on_result)
        rejected += list(rejections)
        return write_bucket_files(
            root,
            index,
            buckets,
            fingerprint,
            lambda shard: write_shard_from(root, shard, rows, spool.get) if rows else None,
            rejected,
            first,
        )
