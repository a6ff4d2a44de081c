"""`wit shards verify` and `wit shards ls`: exit codes and what they print."""

import dataclasses
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.shards import DatasetWriter
from schemas import DatasetManifest, fields, reasons
from schemas.manifest import MANIFEST_NAME
from wit.cli import main


def _dataset(root: Path, n: int = 5, per_shard: int = 3) -> Path:
    with DatasetWriter(root, samples_per_shard=per_shard) as writer:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(buf, "PNG")
            row = {
                fields.KEY: f"k{i}",
                fields.CAPTION: f"red {i}",
                fields.URL: "http://x.test/",
                fields.IMAGE_FORMAT: "png",
            }
            writer.add(row, buf.getvalue())
        writer.reject({fields.KEY: "r0", fields.STAGE: reasons.FETCH, fields.REASON: reasons.HTTP_4XX})
    return root


def test_verify_ok(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert main(["shards", "verify", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 2 shards, 5 rows, 1 rejection file; 5 files, ")
    assert out.rstrip().endswith("bytes match manifest.json")


def test_verify_reports_each_problem_and_exits_1(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    tar = root / "shards" / "00001.tar"
    raw = bytearray(tar.read_bytes())
    raw[600] ^= 1
    tar.write_bytes(bytes(raw))
    (root / "shards" / "00000.parquet").unlink()
    assert main(["shards", "verify", str(root)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0] == "shards/00000.parquet: missing"
    assert lines[1].startswith("shards/00001.tar: sha256 ")
    assert "2 problem(s)" in captured.err


def test_verify_refuses_what_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["shards", "verify", str(tmp_path / "empty")]) == 2
    assert "not a wit-builder dataset (no manifest.json)" in capsys.readouterr().err
    assert main(["shards", "verify", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["shards", "verify", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_verify_refuses_a_bad_or_future_manifest(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    manifest = DatasetManifest.from_json((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(dataclasses.replace(manifest, schema_version="2.0").to_json())
    assert main(["shards", "verify", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wit shards: error: ") and "schema_version 2.0 is not supported" in err
    (root / MANIFEST_NAME).write_text("{not json")
    assert main(["shards", "ls", str(root)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_ls_prints_a_table_with_totals(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    manifest = DatasetManifest.from_json((root / MANIFEST_NAME).read_text())
    assert main(["shards", "ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["shard", "rows", "tar", "bytes", "parquet", "bytes"]
    first, second = manifest.shards
    assert lines[1].split() == ["00000", "3", f"{first.tar.bytes:,}", f"{first.parquet.bytes:,}"]
    assert lines[2].split() == ["00001", "2", f"{second.tar.bytes:,}", f"{second.parquet.bytes:,}"]
    total_tar, total_parquet = first.tar.bytes + second.tar.bytes, first.parquet.bytes + second.parquet.bytes
    assert lines[3].split() == ["total", "5", f"{total_tar:,}", f"{total_parquet:,}"]
    assert lines[4] == "2 shards"


def test_ls_reads_an_img2dataset_style_folder(tmp_path, capsys):
    # img2dataset's layout: NNNNN.tar beside NNNNN.parquet whose failed rows have no sample in the tar.
    root = tmp_path / "i2d"
    root.mkdir()
    (root / "00000.tar").write_bytes(b"\0" * 10240)
    pq.write_table(
        pa.table({"key": ["000000", "000001"], "status": ["success", "failed_to_download"]}), root / "00000.parquet"
    )
    assert main(["shards", "ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["00000", "1", "10,240"]


def test_shards_without_a_subcommand_prints_usage(capsys):
    assert main(["shards"]) == 2
    assert "verify" in capsys.readouterr().err
