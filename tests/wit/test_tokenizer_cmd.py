"""`wit tokenizer train`: a merges file from a dataset's captions, and one-line errors on bad input."""

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipmodel.tokenizer import Tokenizer, read_merges
from pipeline.shards import DatasetWriter
from schemas import fields
from wit.cli import main


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _dataset(root: Path, captions: list[str]) -> Path:
    image = _png()
    with DatasetWriter(root, samples_per_shard=40) as writer:
        for i, caption in enumerate(captions):
            row = {
                fields.KEY: f"k{i}",
                fields.CAPTION: caption,
                fields.URL: "http://x.test/",
                fields.IMAGE_FORMAT: "png",
            }
            writer.add(row, image)
    return root


@pytest.fixture(scope="module")
def captions(laion_sample) -> list[str]:
    return [c for c in pq.read_table(laion_sample, columns=["TEXT"]).column("TEXT").to_pylist()[:100] if c]


def test_train_writes_a_loadable_merges_file(tmp_path, captions, capsys):
    root = _dataset(tmp_path / "ds", captions)
    out = tmp_path / "bpe.txt.gz"
    assert main(["tokenizer", "train", "--data", str(root), "--vocab-size", "600", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote {out}: 86 merges, vocab size 600, from {len(captions)} captions")
    tokenizer = Tokenizer(out)
    assert tokenizer.vocab_size == 600
    assert tokenizer.decode(tokenizer.encode(captions[0])).replace(" ", "") == captions[0].lower().replace(" ", "")


def test_train_reports_when_the_captions_run_out_of_pairs(tmp_path, capsys):
    root = _dataset(tmp_path / "ds", ["red cat", "red dog"])
    out = tmp_path / "bpe.txt"
    assert main(["tokenizer", "train", "--data", str(root), "--vocab-size", "5000", "--out", str(out)]) == 0
    message = capsys.readouterr().out
    # "red" twice: r e d</w> -> (r, e) 2 and (e, d</w>) 2 tie, (e, d</w>) first; then (r, ed</w>) 2. Nothing else.
    assert "2 merges, vocab size 516" in message and "asked for 5,000" in message
    assert read_merges(out) == [("e", "d</w>"), ("r", "ed</w>")]


def test_train_uses_only_img2dataset_successes(tmp_path, capsys):
    root = tmp_path / "i2d"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        for key, data in (("000000000.jpg", _png()), ("000000000.txt", b"blue bird")):
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = pa.table(
        {
            "key": ["000000000", "000000001", "000000002"],
            "caption": ["blue bird", "zzzz zzzz", "blue bird"],
            "status": ["success", "failed_to_download", "success"],
        }
    )
    pq.write_table(table, root / "00000.parquet")
    out = tmp_path / "bpe.txt"
    assert main(["tokenizer", "train", "--data", str(root), "--vocab-size", "700", "--out", str(out)]) == 0
    merges = read_merges(out)
    assert ("z", "z") not in merges and ("b", "l") in merges
    assert "from 2 captions" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{tmp}/missing", "--vocab-size", "600"], "missing: no such dataset directory"),
        (["--data", "{tmp}/empty", "--vocab-size", "600"], "not a wit-builder dataset"),
        (["--data", "{tmp}/empty", "--vocab-size", "300"], "--vocab-size 300 is too small: at least 514"),
        (["--data", "{tmp}/empty", "--vocab-size", "600", "--min-frequency", "0"], "--min-frequency must be"),
    ],
)
def test_train_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["tokenizer", "train", *argv, "--out", str(tmp_path / "out.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wit tokenizer: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.txt").exists()


def test_train_refuses_a_dataset_without_captions(tmp_path, capsys):
    root = _dataset(tmp_path / "ds", ["", ""])
    assert main(["tokenizer", "train", "--data", str(root), "--vocab-size", "600", "--out", str(tmp_path / "o")]) == 2
    assert "no captions in its shards" in capsys.readouterr().err
