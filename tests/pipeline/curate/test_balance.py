"""Query balancing: entry lists, Aho–Corasick matching, seeded draws, the cap's statistics, and the Beam stage."""

import json
import math
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.batches import batched
from pipeline.curate.balance import (
    BalanceConfig,
    BalanceQueries,
    balance_pure,
    build_automaton,
    draw,
    load_entries,
    match_entries,
    normalize_entries,
    sample_verdict,
    write_balance_counts,
)
from schemas import REJECTION_SCHEMA, fields, reasons
from schemas.manifest import BALANCE_COUNTS_NAME
from schemas.reasons import REJECTED
from schemas.records import BALANCE_COUNTS_SCHEMA


def cands(*groups: tuple[str, int]) -> list[dict]:
    """`n` candidates per (caption, n), keyed uniquely."""
    out = []
    for caption, n in groups:
        out += [{fields.KEY: f"k{len(out) + i}", fields.CAPTION: caption} for i in range(n)]
    return out


def match(caption: str, entries: list[str], word_boundaries: bool = True) -> list[str]:
    return match_entries(caption, build_automaton(normalize_entries(entries)), word_boundaries)


def sigma(n: int, p: float) -> float:
    return math.sqrt(n * p * (1 - p))


def test_normalize_entries():
    raw = ["  New\tYork ", "new york", "Cat", "cafe\u0301", "x", "", "CAT"]
    assert normalize_entries(raw, min_len=2) == ["new york", "cat", "café"]  # NFD é composed, order of first sight


def test_match_word_boundaries():
    entries = ["cat", "a", "log"]
    assert match("A Catalog of cats", entries) == ["a"]
    assert match("A Catalog of cats", entries, word_boundaries=False) == ["a", "cat", "log"]
    assert match("the cat's toy (cat-like) red_cat.jpg", ["cat"]) == ["cat"]
    assert match("concatenate", ["cat"]) == []
    assert match("", entries) == [] and match(None, entries) == []


def test_match_multiword_and_overlapping():
    entries = ["new york", "york city", "new york city", "york", "city"]
    assert match("New  York\nCity at night", entries) == sorted(entries)
    assert match("newyork city", entries) == ["city"]


def test_match_unicode():
    assert match("CAFÉ au lait", ["café"]) == ["café"]
    assert match("Straße in München", ["münchen", "straße"]) == ["münchen", "straße"]
    # No spaces between Japanese words: whole-word matching finds an entry only where it stands alone.
    assert match("東京タワーの夜景", ["東京"]) == []
    assert match("東京タワーの夜景", ["東京"], word_boundaries=False) == ["東京"]
    assert match("東京 の夜景", ["東京"]) == ["東京"]


def test_match_with_no_entries():
    assert match_entries("a cat", build_automaton([])) == []


def test_metadata_line_file(tmp_path: Path):
    path = tmp_path / "entries.txt"
    path.write_text("\ufeff# my queries\nCat\n\n  golden   retriever \ncat\n# comment\nx\nnew york\n", encoding="utf-8")
    assert load_entries(BalanceConfig(metadata_path=str(path))) == ["cat", "golden retriever", "new york"]


def test_metadata_json(tmp_path: Path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(["Cat", "golden retriever", "cat", "#1 fan", "The"]))
    assert load_entries(BalanceConfig(metadata_path=str(path))) == ["cat", "golden retriever", "#1 fan", "the"]
    with_words = load_entries(BalanceConfig(metadata_path=str(path), add_wordfreq=True, top_n=100))
    assert with_words[:100] == load_entries(BalanceConfig(top_n=100))  # the words first, then the file's news
    assert with_words[100:] == ["cat", "golden retriever", "#1 fan"]
    path.write_text(json.dumps({"cat": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        load_entries(BalanceConfig(metadata_path=str(path)))
    path.write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        load_entries(BalanceConfig(metadata_path=str(path)))


def test_wordfreq_default_list():
    entries = load_entries(BalanceConfig())
    assert 20_000 < len(entries) < 40_000  # Zipf >= 3: about once per million words or more often
    assert entries[:3] == ["the", "to", "and"] and "cat" in entries and "it's" not in entries
    assert all(e.isalpha() and len(e) >= 2 for e in entries)
    assert load_entries(BalanceConfig()) == entries
    top = load_entries(BalanceConfig(top_n=1000))
    assert len(top) == 1000 and top == entries[:1000]
    assert len(load_entries(BalanceConfig(min_zipf=4.0))) < 10_000


@pytest.mark.parametrize(
    "kwargs", [{"t": 0}, {"top_n": 0}, {"min_entry_len": 0}, {"wordfreq_lang": "xx"}], ids=lambda k: next(iter(k))
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        BalanceConfig(**kwargs)


def test_draw_is_fixed_by_key_entry_and_seed():
    assert draw("k0", "cat", 0) == 0.8218641281357895  # pinned: the same in every process, runner and release
    assert draw("k0", "cat", 1) == 0.1186457103496128
    assert draw("k0", "dog", 0) != draw("k0", "cat", 0) != draw("k1", "cat", 0)
    values = [draw(f"k{i}", "cat", 0) for i in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert abs(sum(v < 0.1 for v in values) - 2000) < 4 * sigma(20_000, 0.1)


def test_sample_verdict():
    cfg = BalanceConfig(t=10)
    cand = {fields.KEY: "k0", fields.MATCHED_ENTRIES: ["cat", "new york"]}
    assert sample_verdict(cand, {"cat": 10, "new york": 5}, cfg) == (None, "")  # at or under t: always kept
    # draw("k0", "cat", 0) is 0.82: kept while t / count exceeds it, whatever the other entry says
    assert sample_verdict(cand, {"cat": 12, "new york": 10**9}, cfg) == (None, "")
    assert sample_verdict(cand, {"cat": 13, "new york": 10**9}, cfg) == (
        reasons.OVER_QUERY_CAP,
        "cat:13, new york:1000000000",
    )


def test_cap_thins_common_entries_and_spares_rare_ones():
    data = cands(("a photo of a cat", 3995), ("a rare cat", 5), ("a rare bird", 5), ("a dog", 995))
    out = balance_pure(data, BalanceConfig(t=500), entries=["cat", "rare"])
    assert out.counts_before == {"cat": 4000, "rare": 10}
    assert abs(out.counts_after["cat"] - 500) < 4 * sigma(4000, 500 / 4000)
    assert out.counts_after["rare"] == 10  # under t: untouched, and the 5 "rare cat" pairs survive through it
    kept_keys = [c[fields.KEY] for c in out.kept]
    assert len(kept_keys) == len(set(kept_keys)) == out.counts_after["cat"] + 5
    assert all(c[fields.MATCHED_ENTRIES] == ["cat", "rare"] for c in out.kept if "rare cat" in c[fields.CAPTION])
    verdicts = [r[fields.REASON] for r in out.rejected]
    assert verdicts.count(reasons.NO_QUERY_MATCH) == 995
    assert verdicts.count(reasons.OVER_QUERY_CAP) == 4005 - len(out.kept)  # every matched pair not kept
    assert set(kept_keys) | {r[fields.KEY] for r in out.rejected} == {c[fields.KEY] for c in data}
    assert len(out.kept) + len(out.rejected) == len(data)
    assert all(set(r) == set(REJECTION_SCHEMA.names) and r[fields.STAGE] == reasons.BALANCE for r in out.rejected)


def test_any_matched_entry_can_keep_a_pair():
    data = cands(("a cat", 2000), ("a dog", 2000), ("a cat and a dog", 2000))
    out = balance_pure(data, BalanceConfig(t=500), entries=["cat", "dog"])
    assert out.counts_before == {"cat": 4000, "dog": 4000}
    both = sum(c[fields.MATCHED_ENTRIES] == ["cat", "dog"] for c in out.kept)
    p_both = 1 - (1 - 0.125) ** 2  # two independent draws at t / count = 0.125; either one keeps the pair
    assert abs(both - 2000 * p_both) < 4 * sigma(2000, p_both)
    cat_only = sum(c[fields.MATCHED_ENTRIES] == ["cat"] for c in out.kept)
    assert abs(cat_only - 250) < 4 * sigma(2000, 0.125)
    other_seed = balance_pure(data, BalanceConfig(t=500, seed=1), entries=["cat", "dog"])
    assert {c[fields.KEY] for c in other_seed.kept} != {c[fields.KEY] for c in out.kept}


def test_real_captions_match_rate(laion_sample: Path):
    """On 1,000 real LAION captions the default wordfreq list matches nearly all; entries under t keep all."""
    captions = pq.read_table(laion_sample, columns=["TEXT"]).column("TEXT").to_pylist()
    data = [{fields.KEY: str(i), fields.CAPTION: c} for i, c in enumerate(captions)]
    out = balance_pure(data, BalanceConfig(t=5))
    no_match = sum(r[fields.REASON] == reasons.NO_QUERY_MATCH for r in out.rejected)
    assert no_match < 50, no_match  # slugs of unknown words and a few non-English captions
    assert max(out.counts_before, key=out.counts_before.get) == "the"
    assert all(out.counts_after[e] == n for e, n in out.counts_before.items() if n <= 5)
    assert 500 < len(out.kept) < 1000 - no_match  # "the", "of", "and" are thinned; a pair survives on any rare word
    substrings = balance_pure(data, BalanceConfig(t=5, word_boundaries=False))
    assert sum(r[fields.REASON] == reasons.NO_QUERY_MATCH for r in substrings.rejected) <= no_match


def test_balance_counts_file_round_trip(tmp_path: Path):
    entry = write_balance_counts(tmp_path, {"cat": 40, "dog": 40, "rare": 3}, {"cat": 10, "dog": 12, "rare": 3})
    table = pq.read_table(tmp_path / BALANCE_COUNTS_NAME)
    assert table.schema.equals(BALANCE_COUNTS_SCHEMA)
    assert table.to_pylist() == [
        {"entry": "cat", "count_before": 40, "count_after": 10},
        {"entry": "dog", "count_before": 40, "count_after": 12},
        {"entry": "rare", "count_before": 3, "count_after": 3},
    ]
    assert entry.path == BALANCE_COUNTS_NAME and entry.bytes == (tmp_path / BALANCE_COUNTS_NAME).stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [BALANCE_COUNTS_NAME]  # no temp file left behind


STAGE_DATA = cands(("a cat", 60), ("a dog on a mat", 30), ("a cat and a dog", 20), ("a rare bird", 3), ("nothing", 7))
STAGE_ENTRIES = ["cat", "dog", "mat", "rare bird"]


def kept_row(c: dict) -> tuple:
    return c[fields.KEY], tuple(c[fields.MATCHED_ENTRIES])


def rejected_row(r: dict) -> tuple:
    return r[fields.KEY], r[fields.REASON], r[fields.DETAIL]


def run_stage(cfg: BalanceConfig, expected, out_dir: Path, options: PipelineOptions | None = None) -> dict[str, int]:
    """Run BalanceQueries, assert it gives exactly what balance_pure gave, write the counts file; return counters."""
    want = [("kept", kept_row(c)) for c in expected.kept] + [(REJECTED, rejected_row(r)) for r in expected.rejected]
    want += [("before", kv) for kv in expected.counts_before.items()]
    want += [("after", kv) for kv in expected.counts_after.items()]
    p = TestPipeline(runner=None if options else "FnApiRunner", options=options)
    work = str(out_dir / f"work-{id(options)}")
    out = p | beam.Create(list(batched(STAGE_DATA, 16))) | BalanceQueries(cfg, work, STAGE_ENTRIES, rows_hint=120)
    # One assert_that over every output, tagged: each assert_that adds a grouping stage, and they cost seconds.
    got = (
        out.kept | "Kept" >> beam.FlatMap(lambda rows: [("kept", kept_row(c)) for c in rows]),
        out[REJECTED]
        | "Rejected" >> beam.Flatten()
        | "Rej" >> beam.FlatMap(lambda rows: [(REJECTED, rejected_row(r)) for r in rows]),
        out.counts_before | "Before" >> beam.FlatMap(lambda counts: [("before", kv) for kv in counts.items()]),
        out.counts_after | "After" >> beam.FlatMap(lambda counts: [("after", kv) for kv in counts.items()]),
    ) | beam.Flatten()
    assert_that(got, equal_to(want))
    counts = (beam.pvalue.AsSingleton(out.counts_before), beam.pvalue.AsSingleton(out.counts_after))
    _ = p | "Dir" >> beam.Create([str(out_dir)]) | "WriteCounts" >> beam.Map(write_balance_counts, *counts)
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(reasons.BALANCE))["counters"]
    return {c.key.metric.name: c.committed for c in counters}


def test_stage_agrees_with_reference_on_every_run(tmp_path: Path):
    cfg = BalanceConfig(t=20)
    expected = balance_pure(STAGE_DATA, cfg, STAGE_ENTRIES)
    assert len(expected.kept) + len(expected.rejected) == len(STAGE_DATA) == 120
    assert expected.counts_before == {"cat": 80, "dog": 50, "mat": 30, "rare bird": 3}
    assert 0 < expected.counts_after["cat"] < 80 and expected.counts_after["rare bird"] == 3
    counters = run_stage(cfg, expected, tmp_path)
    assert counters == {
        "matched": 113,
        reasons.NO_QUERY_MATCH: 7,
        "kept": len(expected.kept),
        reasons.OVER_QUERY_CAP: 113 - len(expected.kept),
    }
    # Again on a different runner with parallel workers: the draws depend on the data, not the schedule.
    run_stage(cfg, expected, tmp_path, PipelineOptions(direct_num_workers=2, direct_running_mode="multi_threading"))
    rows = pq.read_table(tmp_path / BALANCE_COUNTS_NAME).to_pylist()
    assert {r["entry"]: (r["count_before"], r["count_after"]) for r in rows} == {
        e: (n, expected.counts_after.get(e, 0)) for e, n in expected.counts_before.items()
    }
