"""`wit extract` as a Beam job: in process, on the portable path Flink/Spark use (SDK workers in a worker pool's
processes) and on a Dask cluster, with the same rows on each."""

import io

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from beam_jobs import extract
from schemas import CANDIDATE_SCHEMA, PAGE_SCHEMA, fields


def _archive(path, n_pages: int) -> None:
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i in range(n_pages):
            body = f'<title>p{i}</title><img src="/i/{i}.jpg" alt="picture {i}"><img src="/i/{i}b.png">'.encode()
            hh = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(
                    f"http://s{i % 3}.example/p{i}.html", "response", payload=io.BytesIO(body), http_headers=hh
                )
            )


def _runner_args(runner: str, request) -> list[str]:
    if runner == "external":  # SDK workers in a worker pool's processes, the portable path Flink and Spark use
        return request.getfixturevalue("worker_pool").options
    if runner == "dask":  # a scheduler and two worker processes
        return ["--runner=DaskRunner", f"--dask_client_address={request.getfixturevalue('dask_cluster').address}"]
    return {"fnapi": ["--runner=FnApiRunner"], "default": []}[runner]


@pytest.mark.parametrize("runner", ["fnapi", "external", "dask", "default"])
def test_extract_job(tmp_path, runner, request):
    _archive(tmp_path / "a.warc.gz", 10)
    _archive(tmp_path / "b.warc.gz", 5)
    out = tmp_path / "out"
    extract.run(["--input", str(tmp_path / "*.warc.gz"), "--out", str(out), *_runner_args(runner, request)])
    cands = pq.read_table(sorted(out.glob("candidates-*.parquet"))).to_pylist()
    pages = pq.read_table(sorted(out.glob("pages-*.parquet")))
    assert pq.read_schema(next(out.glob("candidates-*.parquet"))).names == CANDIDATE_SCHEMA.names
    assert pages.schema.names == PAGE_SCHEMA.names and pages.num_rows == 15
    assert len(cands) == 30 and len({c[fields.KEY] for c in cands}) == 30
    assert sorted(c[fields.CAPTION] for c in cands if c[fields.CAPTION])[:2] == ["picture 0", "picture 0"]
    if runner != "fnapi":  # the same rows as the in-process runner; how they split into files is the runner's
        ref = tmp_path / "ref"
        extract.run(["--input", str(tmp_path / "*.warc.gz"), "--out", str(ref), "--runner=FnApiRunner"])
        for name in ("candidates", "pages"):
            assert _rows(out, name) == _rows(ref, name)


def _rows(out, name: str) -> list[str]:
    return sorted(map(repr, pq.read_table(sorted(out.glob(f"{name}-*.parquet"))).to_pylist()))
