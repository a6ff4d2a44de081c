"""`wit extract` and `wit crawl` through the command line: outputs, errors, help."""

import io

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from schemas import fields
from wit.cli import main


def test_extract_command(tmp_path, capsys):
    with open(tmp_path / "x.warc.gz", "wb") as f:
        w = WARCWriter(f, gzip=True)
        hh = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        body = io.BytesIO(b'<img src="a.jpg" alt="an apple">')
        w.write_record(w.create_warc_record("http://h.example/p.html", "response", payload=body, http_headers=hh))
    out = tmp_path / "out"
    assert main(["extract", "--input", str(tmp_path / "*.warc.gz"), "--out", str(out), "--runner=FnApiRunner"]) == 0
    rows = pq.read_table(sorted(out.glob("candidates-*.parquet"))).to_pylist()
    assert [(r[fields.URL], r[fields.CAPTION]) for r in rows] == [("http://h.example/a.jpg", "an apple")]


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["extract", "--input", str(tmp_path / "none-*.warc"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wit extract: error: no files match '{tmp_path / 'none-*.warc'}'"]
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# nothing\n")
    assert main(["crawl", "--seeds", str(seeds), "--out", str(tmp_path / "o")]) == 2
    assert "no seed URLs" in capsys.readouterr().err


def test_help_of_every_command_group(capsys):
    for argv in (["--help"], ["web", "--help"], ["shards", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "usage: wit" in capsys.readouterr().out
    for argv in (["crawl", "--help"], ["extract", "--help"], ["fetch", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert f"usage: wit {argv[0]}" in capsys.readouterr().out


def test_unknown_flag_on_a_non_beam_command_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["shards", "ls", "x", "--no-such-flag"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
