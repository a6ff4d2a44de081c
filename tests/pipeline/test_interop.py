"""Interop both ways, against the synthetic web: img2dataset's output read by our reader; ours by webdataset."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.shard_reader import ReadReport, list_shards, read_dataset
from schemas import fields


def test_img2dataset_run_on_the_synthetic_web_is_read_by_our_reader(tmp_path, served_web, monkeypatch):
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which phones home
    from img2dataset import download

    truth = [r for r in served_web.truth() if r["kind"] == "image"]
    ok = [r for r in truth if r["expected"] == "ok"][:40]
    faults = [r for r in truth if r["fault"] in ("http_404", "truncated", "corrupt")]
    rows = ok + faults
    pq.write_table(
        pa.table({"url": [r["url"] for r in rows], "caption": [r["caption"] or "" for r in rows]}),
        tmp_path / "urls.parquet",
    )
    out = tmp_path / "i2d"
    download(url_list=str(tmp_path / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
             output_folder=str(out), output_format="webdataset", processes_count=1, thread_count=16, image_size=64,
             resize_mode="keep_ratio", timeout=5, retries=0, number_sample_per_shard=25)  # fmt: skip

    report = ReadReport()
    samples = list(read_dataset(out, report))
    assert report.errors == []
    by_url = {s.row[fields.URL]: s for s in samples}
    assert set(by_url) == {r["url"] for r in ok}  # every good image, and none of the broken ones
    for r in ok:
        s = by_url[r["url"]]
        assert s.caption == (r["caption"] or "")
        assert (s.row[fields.ORIGINAL_WIDTH], s.row[fields.ORIGINAL_HEIGHT]) == (r["width"], r["height"])
        assert s.row[fields.SHA256] == r["sha256"]  # of the bytes as served
        assert min(Image.open(io.BytesIO(s.image)).size) == 64
    assert sum(e.rows for e in list_shards(out)) == len(ok)
