"""The stats report's pure functions: metrics, funnel, concentration, balance curves, summary, compare."""

import math

import pytest

from pipeline.report import stats
from pipeline.report.compare import compare_stats
from schemas import fields, reasons

COUNTS = {
    reasons.TEXT: {reasons.BOILERPLATE: 10, reasons.LANGUAGE: 5},
    reasons.DEDUP: {reasons.DUPLICATE_URL: 3, reasons.NEAR_DUPLICATE_IMAGE: 2},
    reasons.BALANCE: {reasons.NO_QUERY_MATCH: 4},
    reasons.FETCH: {reasons.TIMEOUT: 6},
    reasons.SHARDS: {"kept": 70},
}


def test_sample_metrics_of_a_row() -> None:
    row = {
        fields.CAPTION: "a  red circle",
        fields.ORIGINAL_WIDTH: 300,
        fields.ORIGINAL_HEIGHT: 200,
        fields.WIDTH: 256,
        fields.HEIGHT: 171,
        fields.BYTES: 5000,
        fields.CLIP_SCORE: None,
    }
    assert stats.sample_metrics(row) == {
        "caption_words": 3,
        "caption_chars": 13,
        "caption_tokens": 3,
        "original_width": 300,
        "original_height": 200,
        "aspect": 1.5,
        "width": 256,
        "height": 171,
        "bytes": 5000,
        "clip_score": None,
    }
    empty = stats.sample_metrics({fields.CAPTION: None, fields.ORIGINAL_WIDTH: 10, fields.ORIGINAL_HEIGHT: 0})
    assert empty["caption_words"] == 0 and empty["caption_chars"] == 0 and empty["aspect"] is None


def test_tokens_languages_domains_and_hash() -> None:
    assert stats.caption_tokens("Here's a RED circle, 2x!") == ["here", "s", "a", "red", "circle", "2x"]
    assert stats.caption_tokens(None) == []
    assert stats.language({fields.LANG: "en"}) == "en" and stats.language({fields.LANG: None}) == stats.NO_LANGUAGE
    assert stats.domain("http://User@Example.COM:8080/a.jpg") == "example.com:8080"
    assert stats.domain(None) == stats.domain("not a url") == stats.NO_DOMAIN
    h = stats.sample_hash(0, "abc")
    assert h == stats.sample_hash(0, "abc") != stats.sample_hash(1, "abc") and 0 <= h < 2**63


def test_top_list_orders_by_count_then_value() -> None:
    top = stats.top_list([("b", 2), ("a", 2), ("c", 5), ("d", 1)], total=10, k=3)
    assert top == [
        {"value": "c", "count": 5, "share": 0.5},
        {"value": "a", "count": 2, "share": 0.2},
        {"value": "b", "count": 2, "share": 0.2},
    ]


def test_funnel_from_manifest_counts() -> None:
    f = stats.funnel(COUNTS, kept=70)
    assert f["candidates"] == 100 and f["kept"] == 70
    assert [s["stage"] for s in f["stages"]] == [reasons.TEXT, reasons.DEDUP, reasons.BALANCE, reasons.FETCH]
    text = f["stages"][0]
    assert text["rejected"] == 15
    assert text["reasons"][0] == {
        "reason": reasons.BOILERPLATE,
        "count": 10,
        "share": 0.1,
        "description": reasons.REASONS[reasons.BOILERPLATE].description,
    }
    assert stats.reason_total(COUNTS, reasons.BOILERPLATE, reasons.TIMEOUT) == 16
    # Balancing judged all but the text and URL-dedup rejections: 100 - 15 - 3.
    assert stats.reaching_balance(COUNTS, kept=70) == 82


def test_gini_and_top_shares_from_count_of_counts() -> None:
    counts = [1, 1, 2, 4, 12]  # per-domain kept samples
    coc = {1: 2, 2: 1, 4: 1, 12: 1}
    n, total = len(counts), sum(counts)
    direct = sum(abs(a - b) for a in counts for b in counts) / (2 * n * n * total / n)
    assert stats.gini(coc) == pytest.approx(direct)
    assert stats.gini({5: 10}) == pytest.approx(0.0)  # everyone equal
    assert stats.gini({}) == 0.0
    assert stats.top_share(coc, 0.01) == 12 / 20  # at least one domain
    assert stats.top_share(coc, 0.5) == (12 + 4 + 2) / 20  # ceil(2.5) = 3 domains
    assert stats.top_share({3: 200}, 0.1) == pytest.approx(0.1)


def test_log_rank_points_and_curves() -> None:
    assert stats.log_rank_points(0) == [] and stats.log_rank_points(5) == [1, 2, 3, 4, 5]
    ranks = stats.log_rank_points(100_000)
    assert len(ranks) <= 200 and ranks[0] == 1 and ranks[-1] == 100_000 and ranks == sorted(set(ranks))
    assert stats.rank_curve([0, 3, 9, 1]) == [[1, 9], [2, 3], [3, 1]]


def test_balance_section() -> None:
    entries = [(f"e{i:02d}", 40 - i, min(40 - i, 30)) for i in range(40)] + [("never", 0, 0)]
    b = stats.balance_section(entries, t=30, no_match=5, reaching=50)
    assert (b["t"], b["entries"], b["matched_entries_before"], b["matched_entries_after"]) == (30, 41, 40, 40)
    assert b["curve_before"][0] == [1, 40] and b["curve_before"][-1] == [40, 1]
    assert b["curve_after"][:2] == [[1, 30], [2, 30]]
    assert b["head"][0] == {"entry": "e00", "before": 40, "after": 30} and len(b["head"]) == 25
    assert [e["entry"] for e in b["tail"]] == [f"e{i:02d}" for i in range(25, 40)]  # never repeats head
    assert b["no_match_share"] == 0.1


def test_duplicate_section_counts_removed_members() -> None:
    hist = {"count": 3, "sum": 2 + 2 + 5}
    assert stats.duplicate_section(hist) == {"groups": 3, "removed": 6, "sizes": hist}
    assert stats.duplicate_section(None) is None


def test_compare_diffs_the_union_of_summaries() -> None:
    a = {"summary": {"rows": 10, "kept_share": 0.5, "lang_share.de": 0.1}}
    b = {"summary": {"rows": 7, "kept_share": 0.75, "clip_score.p50": 0.3}}
    c = compare_stats(a, b)
    assert c["format"] == "wit-builder-stats-compare" and c["version"] == 1 and c["a"] is a and c["b"] is b
    assert c["diff"] == [
        {"metric": "clip_score.p50", "a": None, "b": 0.3, "delta": None},
        {"metric": "kept_share", "a": 0.5, "b": 0.75, "delta": 0.25},
        {"metric": "lang_share.de", "a": 0.1, "b": None, "delta": None},
        {"metric": "rows", "a": 10, "b": 7, "delta": -3},
    ]
    assert not math.isnan(c["diff"][1]["delta"])
