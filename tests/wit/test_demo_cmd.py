"""`wit demo`, which `make demo` runs: a synthetic web crawled and built by the Beam jobs into a verified dataset."""

from pipeline.shard_reader import read_dataset, verify_dataset
from schemas import DatasetManifest, reasons
from wit.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--pages", "8"]) == 0
    out = capsys.readouterr().out
    assert "verify" in out and ": OK" in out
    dataset = tmp_path / "demo" / "dataset"
    assert verify_dataset(dataset) == []
    manifest = DatasetManifest.from_json((dataset / "manifest.json").read_text())
    samples = list(read_dataset(dataset))
    assert len(samples) == manifest.rows > 30
    fetch_reasons = set(manifest.counts.get("fetch", {}))
    assert {reasons.ROBOTS_DISALLOWED, reasons.OPTOUT_HEADER, reasons.TOO_MANY_REDIRECTS} <= fetch_reasons
    assert reasons.TOO_MANY_PIXELS in manifest.counts.get("image", {})
    assert {reasons.LANGUAGE, reasons.BOILERPLATE} <= set(manifest.counts.get("text", {}))
    assert reasons.DUPLICATE_IMAGE in manifest.counts.get("dedup", {})
