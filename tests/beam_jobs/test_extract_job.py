"""`wit extract` as a Beam job, on the in-process runner and on the portable path Dataflow/Flink/Spark use."""

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


@pytest.mark.parametrize(
    "runner",
    [["--runner=FnApiRunner"], ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"], []],
)
def test_extract_job(tmp_path, runner):
    _archive(tmp_path / "a.warc.gz", 10)
    _archive(tmp_path / "b.warc.gz", 5)
    out = tmp_path / "out"
    extract.run(["--input", str(tmp_path / "*.warc.gz"), "--out", str(out), *runner])
    cands = pq.read_table(sorted(out.glob("candidates-*.parquet"))).to_pylist()
    pages = pq.read_table(sorted(out.glob("pages-*.parquet")))
    assert pq.read_schema(next(out.glob("candidates-*.parquet"))).names == CANDIDATE_SCHEMA.names
    assert pages.schema.names == PAGE_SCHEMA.names and pages.num_rows == 15
    assert len(cands) == 30 and len({c[fields.KEY] for c in cands}) == 30
    assert sorted(c[fields.CAPTION] for c in cands if c[fields.CAPTION])[:2] == ["picture 0", "picture 0"]
