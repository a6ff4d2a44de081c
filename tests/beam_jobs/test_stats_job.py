"""`wit stats` end to end: stats.json of hand-made datasets, compare mode, bad inputs, and (slow) a dataset built from
the synthetic web, every number checked against pyarrow on the dataset's files and against the web's ground truth."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs import build, crawl
from beam_jobs import stats as stats_job
from pipeline.report.run_stats import RUN_FORMAT
from pipeline.report.stats import DUPLICATE_KINDS, SAMPLE_SPECS, domain
from pipeline.shard_reader import load_manifest
from schemas import fields, reasons
from tests.pipeline.report.tiny_dataset import CLIP_SCORES, write_tiny_dataset, write_tiny_filtered
from wit.cli import main as wit_main


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("stats-job")
    return write_tiny_dataset(tmp / "built"), write_tiny_filtered(tmp / "filtered")


@pytest.mark.slow  # two datasets through Beam and the HTML rendered: ~6 s on an idle machine, 20 s on a busy one
def test_compare_a_build_and_its_filter(tiny_pair, tmp_path: Path, capsys) -> None:
    built, filtered = tiny_pair
    out = tmp_path / "report"
    result = stats_job.run([str(built), "--compare", str(filtered), "--out", str(out), "--seed", "3"])
    written = json.loads((out / stats_job.STATS_NAME).read_text())
    assert written == result and [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert result["format"] == "wit-builder-stats-compare"
    a, b = result["a"], result["b"]
    assert a["dataset"]["path"] == str(built) and b["dataset"]["rows"] == 4 and a["samples"]["seed"] == 3
    assert a["scores"] is None and a["duplicates"]["semantic"] is None
    scores = b["scores"]
    assert scores["threshold"] == 0.3 and scores["top_fraction"] is None
    assert scores["clip_score"]["count"] == 4 and scores["clip_score"]["max"] == pytest.approx(max(CLIP_SCORES))
    assert b["duplicates"]["semantic"]["groups"] == 1 and b["duplicates"]["exact"] is None
    assert b["duplicates"]["examples"][0]["survivor"]["key"] == "k0" and b["balance"] is None
    diff = {d["metric"]: d for d in result["diff"]}
    assert diff["rows"] == {"metric": "rows", "a": 6, "b": 4, "delta": -2}
    assert diff["rejected.score.low_clip_score"] == {
        "metric": "rejected.score.low_clip_score",
        "a": None,
        "b": 1,
        "delta": None,
    }
    assert [d["metric"] for d in result["diff"]] == sorted(diff)
    assert "report written" in capsys.readouterr().out


def test_stats_on_a_dask_cluster_equal_the_default_runners(tiny_pair, tmp_path: Path, dask_cluster) -> None:
    built, filtered = tiny_pair
    args = [str(built), "--compare", str(filtered), "--seed", "3"]
    local = stats_job.run([*args, "--out", str(tmp_path / "local")])
    on_dask = stats_job.run(
        [*args, "--out", str(tmp_path / "dask"), "--runner=DaskRunner", f"--dask_client_address={dask_cluster.address}"]
    )
    assert on_dask == local
    written = [(tmp_path / name / stats_job.STATS_NAME).read_bytes() for name in ("dask", "local")]
    assert written[0] == written[1]


def test_bad_inputs_are_one_line_errors(tiny_pair, tmp_path: Path, capsys) -> None:
    assert wit_main(["stats", str(tmp_path / "absent"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"wit stats: error: {tmp_path / 'absent'}: no such dataset or run folder"
    assert wit_main(["stats", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a wit-builder dataset" in capsys.readouterr().err
    assert wit_main(["stats", str(tiny_pair[0]), "--compare", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()  # nothing written before the inputs are known good


def test_a_run_folder_is_read_without_beam(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {
            "kind": "train",
            "step": 1,
            "samples": 8,
            "loss": 2.0,
            "lr": 1e-3,
            "temperature": 0.07,
            "samples_per_s": 100.0,
        },
        {"kind": "eval", "step": 1, "samples": 8, "top1": 0.1, "top5": 0.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = stats_job.run([str(run), "--out", str(tmp_path / "report")])
    assert result["format"] == RUN_FORMAT and result["train"]["loss"] == [2.0]
    assert json.loads((tmp_path / "report" / stats_job.STATS_NAME).read_text()) == result


# --- a dataset built from the synthetic web (slow: a crawl and a build first) ---


@pytest.fixture(scope="module")
def built(served_web, web_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stats-build")
    crawl.run(["--seeds", str(served_web.seeds_path), "--depth", "3", "--out", str(tmp / "crawl"), "--allow-private"])
    served_web.reset()
    build.run(
        [
            "--candidates",
            f"{tmp}/crawl/candidates-*.parquet",
            "--out",
            str(tmp / "dataset"),
            "--allow-private",
            "--decontaminate",
            str(web_dir / "eval"),
            "--samples-per-shard",
            "16",
            "--threads",
            "16",
        ]
    )
    return tmp / "dataset"


def _tables(root: Path) -> tuple[list[dict], list[dict]]:
    manifest = load_manifest(root)
    kept = pq.read_table([str(root / s.parquet.path) for s in manifest.shards]).to_pylist()
    rejected = pq.read_table([str(root / f.path) for f in manifest.rejected]).to_pylist()
    return kept, rejected


@pytest.mark.slow
def test_stats_of_a_built_dataset_equal_pyarrow_and_the_truth(built: Path, served_web, tmp_path: Path) -> None:
    s = stats_job.run([str(built), "--out", str(tmp_path / "report")])
    kept, rejected = _tables(built)
    # The funnel: every rejection row counted under its reason, the kept rows as kept.
    by_reason = Counter((r[fields.STAGE], r[fields.REASON]) for r in rejected)
    got = {(st["stage"], r["reason"]): r["count"] for st in s["funnel"]["stages"] for r in st["reasons"]}
    assert got == dict(by_reason) and s["funnel"]["kept"] == len(kept) > 30
    assert s["funnel"]["candidates"] == len(kept) + len(rejected)
    # Languages (null: too short to guess) and captions.
    langs = Counter(r[fields.LANG] or "none" for r in kept)
    assert {t["value"]: t["count"] for t in s["captions"]["languages"]} == dict(langs)
    assert s["summary"]["lang_share.en"] == langs["en"] / len(kept)
    words = [len((r[fields.CAPTION] or "").split()) for r in kept]
    hist = s["captions"]["words"]
    edges = np.array(SAMPLE_SPECS["caption_words"].edges)
    assert hist["counts"] == np.histogram(np.clip(words, edges[0], edges[-1] - 1e-9), edges)[0].tolist()
    assert (hist["count"], hist["sum"], hist["min"], hist["max"]) == (len(words), sum(words), min(words), max(words))
    assert hist["quantiles"]["p50"] in sorted(words)[len(words) // 2 - 1 : len(words) // 2 + 2]
    top = Counter(r[fields.CAPTION] for r in kept).most_common(1)[0]
    assert (s["captions"]["top_captions"][0]["value"], s["captions"]["top_captions"][0]["count"]) == top
    boilerplate = by_reason[(reasons.TEXT, reasons.BOILERPLATE)]
    assert boilerplate > 0 and s["captions"]["boilerplate_share"] == boilerplate / s["funnel"]["candidates"]
    # Duplicate groups: survivor + the rejections naming it.
    for reason, kind in DUPLICATE_KINDS.items():
        sizes = Counter(r[fields.DETAIL] for r in rejected if r[fields.REASON] == reason)
        dup = s["duplicates"][kind]
        if kind == "semantic":
            assert dup is None
            continue
        assert (dup["groups"], dup["removed"]) == (len(sizes), sum(sizes.values()))
        edges = dup["sizes"]["edges"]
        group_sizes = np.clip([n + 1 for n in sizes.values()], edges[0], edges[-1] - 1e-9)
        assert dup["sizes"]["counts"] == np.histogram(group_sizes, edges)[0].tolist()
    assert s["duplicates"]["eval_contamination"] == by_reason[(reasons.DEDUP, reasons.EVAL_CONTAMINATION)] > 0
    # Sources: kept and rejected per host.
    per_host = Counter(domain(r[fields.URL]) for r in kept)
    failures = Counter(domain(r[fields.URL]) for r in rejected if r[fields.STAGE] in (reasons.FETCH, reasons.IMAGE))
    assert {t["domain"]: t["kept"] for t in s["sources"]["top"] if t["kept"]} == dict(per_host)
    assert {t["domain"]: t["fetch_failures"] for t in s["sources"]["top"] if t["fetch_failures"]} == dict(failures)
    assert s["sources"]["domains"] == len({domain(r[fields.URL]) for r in kept + rejected})
    # The ground truth: original sizes are what the web served, exact duplicates are the same bytes.
    truth = {r["url"]: r for r in served_web.truth() if r["kind"] == "image"}
    widths = [truth[r[fields.URL]]["width"] for r in kept]
    ow = s["images"]["original_width"]
    assert ow["counts"] == np.histogram(np.clip(widths, 0, ow["edges"][-1] - 1e-9), ow["edges"])[0].tolist()
    by_key = {r[fields.KEY]: r for r in kept}
    for r in rejected:
        if r[fields.REASON] == reasons.DUPLICATE_IMAGE:
            assert truth[r[fields.URL]]["sha256"] == truth[by_key[r[fields.DETAIL]][fields.URL]]["sha256"]
    # The samples: 48 distinct kept with thumbnails, 24 rejected, and the balance curve.
    assert len({x["key"] for x in s["samples"]["kept"]}) == min(48, len(kept))
    assert all(x["thumb"].startswith("data:image/jpeg;base64,") for x in s["samples"]["kept"])
    assert len(s["samples"]["rejected"]) == 24 and s["balance"]["entries"] > 0
    assert s["balance"]["curve_before"][0][0] == 1
