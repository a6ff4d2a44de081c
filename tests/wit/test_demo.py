"""`wit demo`, reduced (a small web, a few training steps): every step runs, and every artifact exists and is valid."""

import hashlib
import json
import random
import socket

import pytest

from clipmodel.embed.embeddings import read_info
from clipmodel.inference import load_model
from pipeline.shard_reader import read_dataset, verify_dataset
from schemas import DatasetManifest, reasons
from wit.cli import main

REDUCED = ["--pages", "6", "--images-per-page", "20", "--eval-per-class", "1", "--samples-per-shard", "32"]
REDUCED += ["--steps", "8", "--batch-size", "16"]
# The ViT, not the demo's ResNet: a ResNet 2 steps into training maps every image to one embedding (its attention
# pool starts out uniform), and SemDeDup would rightly keep one sample of such a dataset, leaving nothing to retrain on.
REDUCED += ["--model", "tiny", "--resolution", "48"]


def _free_base(hosts: int = 3) -> int:
    """A base port with `hosts` free ports above it, below the ephemeral range: the demo's default base may be taken
    by a demo someone is running beside the tests."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 32000)
        socks = []
        try:
            for port in range(base, base + hosts):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


# Not marked slow, so that CI (`make test`) runs the demo: 44 s on this 2-core machine lightly loaded, ~100 s busy.
@pytest.mark.usefixtures("one_thread")
def test_reduced_demo_runs_every_step_and_every_artifact_verifies(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--port", str(_free_base()), *REDUCED]) == 0
    printed = capsys.readouterr().out
    for command in ("web generate", "crawl", "build", "train", "eval", "encode", "filter"):
        assert f"$ wit {command} " in printed, command  # each step shows the command line that ran
    assert "PASS: every artifact exists and verifies." in printed

    # The curated dataset: verifies, holds what its manifest says, and its funnel shows the web's faults caught.
    dataset = out / "dataset"
    assert verify_dataset(dataset) == []
    manifest = DatasetManifest.from_json((dataset / "manifest.json").read_text())
    assert len(list(read_dataset(dataset))) == manifest.rows > 30 and len(manifest.shards) >= 2
    fetch_reasons = set(manifest.counts["fetch"])
    assert {reasons.ROBOTS_DISALLOWED, reasons.OPTOUT_HEADER, reasons.TOO_MANY_REDIRECTS} <= fetch_reasons
    assert reasons.TOO_MANY_PIXELS in manifest.counts["image"] and manifest.counts["dedup"]
    assert {reasons.LANGUAGE, reasons.BOILERPLATE} <= set(manifest.counts["text"])

    assert (out / "report" / "index.html").stat().st_size > 0

    # The run: its checkpoint loads, trained on every shard but the held-out first one.
    loaded = load_model(str(out / "run"), device="cpu")
    assert "8 steps" in loaded.description and loaded.context_length == 16  # the demo's short-context model
    assert loaded.resolution == 48
    config = json.loads((out / "run" / "config.json").read_text())
    trained_on = [d["path"] for d in config["config"]["data"]]
    assert len(trained_on) == len(manifest.shards) - 1 and not any(p.endswith("00000.tar") for p in trained_on)
    assert config["config"]["augment"] == []
    # Zero-shot during training, so the run page's curve climbs: every eval_every steps (8 // 6 = 1) and the end.
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["kind"] == "eval"] == list(range(1, 9))

    # Evaluation: zero-shot by split (classes seen in captions vs held-out combinations), shifts, retrieval.
    results = json.loads((out / "eval.json").read_text())
    zeroshot = results["zeroshot"][str(out / "web" / "eval")]
    assert zeroshot["classes"] == 36 and set(zeroshot["by_split"]) == {"train", "held_out"}
    assert {"background", "texture", "sketch"} <= set(results["robustness"][str(out / "web" / "eval")]["sets"])
    retrieval = results["retrieval"]
    assert retrieval["source"].endswith("00000.tar") and retrieval["pairs"] == manifest.shards[0].rows
    assert 0 <= retrieval["image_to_text"]["R@1"] <= retrieval["image_to_text"]["R@5"] <= 1
    # Judged by the web's truth: every pair's picture is known; some captions name another picture's class.
    by_truth = retrieval["web_truth"]
    assert by_truth["pairs_known"] == retrieval["pairs"] and 0 < by_truth["truthful_pairs"] < retrieval["pairs"]
    assert by_truth["truthful"]["pairs"] == by_truth["truthful_pairs"]
    assert 0 < by_truth["label_oracle"]["image_to_text"]["R@10"] < 1

    # Bootstrap: embeddings of every sample, and a filtered dataset that verifies and is a strict subset.
    info = read_info(out / "embeddings")
    assert info["complete"] and info["rows"] == manifest.rows
    assert "trained 2 steps" in info["model"]  # the first checkpoint, a third into the run, scores for the filter
    filtered = out / "filtered"
    assert verify_dataset(filtered) == []
    kept = DatasetManifest.from_json((filtered / "manifest.json").read_text())
    assert 0 < kept.rows < manifest.rows
    assert set(kept.counts["score"]) <= {reasons.LOW_CLIP_SCORE, reasons.SEMANTIC_DUPLICATE}

    # The same training on the filtered dataset: its checkpoint loads, trained on the filtered shards.
    again = load_model(str(out / "run-filtered"), device="cpu")
    assert "8 steps" in again.description
    config = json.loads((out / "run-filtered" / "config.json").read_text())
    assert [d["path"] for d in config["config"]["data"]] == [str(filtered)]

    # The summary: printed and written, its numbers those of the artifacts.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and set(summary["checks"].values()) == {"ok"}
    assert summary["funnel"]["dataset"] == manifest.rows and summary["funnel"]["filtered"] == kept.rows
    assert summary["zeroshot"]["chance"] == pytest.approx(1 / 36)
    assert summary["zeroshot"]["by_split"]["held_out"]["top1"] == zeroshot["by_split"]["held_out"]["top1"]
    targets = {t["target"]: t for t in summary["targets"]}
    assert targets["zero-shot top-1, all classes"]["value"] == zeroshot["top1"]
    assert all(
        t["met"] == (t["value"] >= t.get("at_least", 2) or t["value"] > t.get("above", 2)) for t in targets.values()
    )
    assert {"zero-shot top-1 under the sketch shift", "retrieval text -> image R@10"} <= set(targets)
    oracle = by_truth["label_oracle"]["text_to_image"]["R@10"]
    assert targets["retrieval text -> image R@10"]["class_perfect"] == oracle
    truth = summary["filter_vs_truth"]
    assert truth["samples"] == manifest.rows and truth["kept"] == kept.rows and truth["no_truth"] == 0
    removed = truth["clip_score"]["removed"] + truth["semantic_dedup"]["removed"]
    assert removed == manifest.rows - kept.rows == sum(kept.counts["score"].values())
    after = json.loads((out / "eval-filtered.json").read_text())["zeroshot"][str(out / "web" / "eval")]
    assert summary["zeroshot_after_filter"]["top1"] == after["top1"]
    assert "zero-shot top-1" in printed and "R@1" in printed and "precision" in printed
    assert "trained again on the filtered dataset" in printed and "targets:" in printed
    assert "class-perfect" in printed


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--steps", "0"], "--steps must be"), (["--hold-out-shards", "0"], "--hold-out-shards"),
     (["--top-fraction", "1.5"], "--top-fraction must")],
)  # fmt: skip
def test_demo_refuses_bad_settings_before_doing_anything(tmp_path, capsys, flags, message) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def _digests(folder) -> dict[str, str]:
    """The data files' digests (the hidden bookkeeping files name their own paths)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    assert files, f"{folder} is empty"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow  # two reduced demos, ~90 s
@pytest.mark.usefixtures("one_thread")
def test_demo_on_the_same_ports_is_reproducible(tmp_path) -> None:
    """Sample keys hash the URL, port included: on the same ports two demos give the same shards, the same trained
    model's numbers and the same filter - the summary is identical but for the paths and timings."""
    base = str(_free_base())
    summaries = []
    for name in ("a", "b"):
        assert main(["demo", "--out", str(tmp_path / name), "--port", base, *REDUCED]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summaries.append({k: v for k, v in summary.items() if k not in ("paths", "seconds")})
    assert summaries[0] == summaries[1]
    for folder in ("dataset/shards", "filtered/shards", "embeddings/img_emb", "embeddings/text_emb"):
        assert _digests(tmp_path / "a" / folder) == _digests(tmp_path / "b" / folder), folder


def test_demo_says_which_port_is_taken(tmp_path, capsys) -> None:
    base = _free_base()
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen()
        rc = main(["demo", "--out", str(tmp_path / "demo"), "--port", str(base), *REDUCED])
    assert rc == 2 and f"cannot serve the web on ports {base}-{base + 2}" in capsys.readouterr().err
