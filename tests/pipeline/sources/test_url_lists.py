"""URL-list sources: formats, gzip, column mapping, header-less TSV, bad rows as rejections, the Beam stage."""

import gzip
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from memfs import clear, upload

from pipeline.rejection import Rejected
from pipeline.sources.url_lists import (
    ReadUrlLists,
    UrlListConfig,
    candidate_from_row,
    count_rows,
    counted_rows,
    detect_format,
    iter_rows,
    list_paths,
    resolve_columns,
)
from schemas import fields, make_key, reasons
from schemas.reasons import REJECTED

ROWS = [("http://a.example/1.jpg", "a red circle"), ("https://b.example/2.png", "Straße, café \u00e9t\u00e9")]


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _read(path: Path, cfg: UrlListConfig | None = None) -> list[tuple[str, str | None]]:
    cfg = cfg or UrlListConfig(str(path))
    rows = list(iter_rows(str(path), detect_format(str(path)), cfg.header))
    url_col, caption_col = resolve_columns(rows[0], cfg, str(path))
    source = f"urls:{path.name}"
    out = [candidate_from_row(r, source, i, url_col, caption_col) for i, r in enumerate(rows)]
    return [(c[fields.URL], c[fields.CAPTION]) for c in out]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_with_header_and_quotes(tmp_path, suffix):
    text = 'url,caption\nhttp://a.example/1.jpg,a red circle\nhttps://b.example/2.png,"Straße, café été"\n'
    assert _read(_write(tmp_path / f"l{suffix}", text)) == ROWS


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_cc3m_style_tsv_without_header(tmp_path, suffix):
    text = "".join(f"{cap}\t{url}\n" for url, cap in ROWS)
    assert _read(_write(tmp_path / f"cc3m{suffix}", text)) == ROWS


def test_jsonl_gz_with_column_mapping(tmp_path):
    text = "".join(json.dumps({"img": u, "alt_text": c, "other": 1}) + "\n" for u, c in ROWS) + "\nnot json\n"
    path = _write(tmp_path / "l.jsonl.gz", text)
    cfg = UrlListConfig(str(path), url_col="img", caption_col="alt_text")
    rows = list(iter_rows(str(path), "jsonl"))
    assert rows[-1] == {}  # a broken line is a row, so it is accounted for, not skipped
    url_col, cap_col = resolve_columns(rows[0], cfg, str(path))
    assert (url_col, cap_col) == ("img", "alt_text")
    with pytest.raises(Rejected) as e:
        candidate_from_row(rows[-1], "s", 2, url_col, cap_col)
    assert e.value.reason == reasons.MALFORMED_ROW


def test_laion_metadata_columns_are_recognised(laion_sample):
    laion = laion_sample
    rows = list(iter_rows(str(laion), "parquet"))
    assert len(rows) == 1000
    assert resolve_columns(rows[0], UrlListConfig(str(laion)), "laion") == ("URL", "TEXT")
    explicit = resolve_columns(rows[0], UrlListConfig(str(laion), url_col="URL", caption_col="TEXT"), "laion")
    assert explicit == ("URL", "TEXT")
    with pytest.raises(ValueError, match="no URL column 'url'"):
        resolve_columns(rows[0], UrlListConfig(str(laion), url_col="url"), "laion")


def test_candidate_rules():
    c = candidate_from_row({"u": "  //cdn.example/x.jpg ", "c": 5}, "urls:f", 3, "u", "c")
    assert c[fields.URL] == "http://cdn.example/x.jpg" and c[fields.CAPTION] == "5"
    assert c[fields.KEY] == make_key("urls:f", 3, "//cdn.example/x.jpg")
    with pytest.raises(Rejected) as e:
        candidate_from_row({"u": "javascript:alert(1)"}, "s", 0, "u", None)
    assert e.value.reason == reasons.INVALID_URL and e.value.candidate[fields.SOURCE_ROW] == 0
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("list.xlsx")


def test_read_url_lists_beam_stage(tmp_path):
    table = pa.table(
        {"url": [u for u, _ in ROWS] + ["", "ftp://x/y.jpg"], "caption": [c for _, c in ROWS] + ["e", "f"]}
    )
    pq.write_table(table, tmp_path / "a.parquet")
    _write(tmp_path / "b.tsv", "".join(f"{c}\t{u}\n" for u, c in ROWS))
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | ReadUrlLists(UrlListConfig(str(tmp_path / "*")))
        got = out.candidates | beam.Map(lambda c: (c[fields.SOURCE], c[fields.SOURCE_ROW], c[fields.URL]))
        bad = out[REJECTED] | beam.Map(lambda r: (r[fields.SOURCE_ROW], r[fields.STAGE], r[fields.REASON]))
        assert_that(
            got,
            equal_to(
                [("urls:a.parquet", i, u) for i, (u, _) in enumerate(ROWS)]
                + [("urls:b.tsv", i, u) for i, (u, _) in enumerate(ROWS)]
            ),
            label="candidates",
        )
        assert_that(bad, equal_to([(2, "source", "malformed_row"), (3, "source", "invalid_url")]), label="rejected")


def test_counted_rows_reads_parquet_footers_only(tmp_path):
    for i, n in enumerate((3, 0, 5)):
        pq.write_table(
            pa.table({"url": [f"http://a.example/{k}.jpg" for k in range(n)]}, pa.schema([("url", pa.string())])),
            tmp_path / f"{i}.parquet",
        )
    assert counted_rows(UrlListConfig(str(tmp_path / "*.parquet"))) == 8
    _write(tmp_path / "b.tsv", "".join(f"{c}\t{u}\n" for u, c in ROWS))
    assert counted_rows(UrlListConfig(str(tmp_path / "*"))) is None  # a text list has no footer: count it in the run
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert counted_rows(UrlListConfig(str(tmp_path / "*.parquet"))) is None  # the read stage reports the bad file


def test_no_matching_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"), TestPipeline(runner="FnApiRunner") as p:
        _ = p | ReadUrlLists(UrlListConfig(str(tmp_path / "*.parquet")))


def test_our_own_candidate_files_keep_keys_and_page_context(tmp_path):
    from pipeline.sources.html import extract_page, page_candidates
    from schemas import CANDIDATE_SCHEMA
    from schemas.records import conform

    page = extract_page('<title>T</title><img src="/a.jpg" alt="an apple on a table">', "http://h.example/p.html")
    cands = page_candidates(page, "crawl")
    pq.write_table(conform(cands, CANDIDATE_SCHEMA), tmp_path / "candidates-00000-of-00001.parquet")
    path = tmp_path / "candidates-00000-of-00001.parquet"
    rows = list(iter_rows(str(path), "parquet"))
    url_col, cap_col = resolve_columns(rows[0], UrlListConfig(str(path)), str(path))
    assert candidate_from_row(rows[0], "urls:x", 0, url_col, cap_col) == cands[0]


def _crawl_output(folder: Path) -> list[dict]:
    """A folder as `wit crawl` leaves it: candidates in two files, and the page log beside them."""
    from pipeline.sources.html import extract_page, page_candidates
    from schemas import CANDIDATE_SCHEMA
    from schemas.records import conform

    folder.mkdir()
    html = '<title>T</title><img src="/a.jpg" alt="an apple on a table"><img src="/b.jpg" alt="a pear in a bowl">'
    cands = page_candidates(extract_page(html, "http://h.example/p.html"), "crawl")
    for i, cand in enumerate(cands):
        pq.write_table(conform([cand], CANDIDATE_SCHEMA), folder / f"candidates-0000{i}-of-00002.parquet")
    pq.write_table(pa.table({"page_url": ["http://h.example/p.html"]}), folder / "pages-00000-of-00001.parquet")
    return cands


def test_a_folder_of_our_candidate_files_is_read_as_its_candidates(tmp_path):
    cands = _crawl_output(tmp_path / "crawl")
    cfg = UrlListConfig(str(tmp_path / "crawl"))
    assert [Path(p).name for p in list_paths(cfg.pattern)] == [f"candidates-0000{i}-of-00002.parquet" for i in (0, 1)]
    assert count_rows(cfg) == 2
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | ReadUrlLists(cfg)
        assert_that(out.candidates | beam.Map(lambda c: c[fields.KEY]), equal_to([c[fields.KEY] for c in cands]))
    remote = upload(tmp_path / "crawl", "memfs://lists/crawl")
    try:
        assert [p.rsplit("/", 1)[1] for p in list_paths(remote)] == [Path(p).name for p in list_paths(cfg.pattern)]
    finally:
        clear(remote)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="a folder without candidates-"):
        list_paths(str(tmp_path / "empty"))
