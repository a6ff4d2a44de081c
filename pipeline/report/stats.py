"""Pure functions of the stats report: per-row metrics, the funnel, concentration, balance curves, the summary."""

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline.report.combiners import HistSpec, linear_edges, log_edges, most_frequent_first
from schemas import fields, reasons

FORMAT = "wit-builder-stats"
COMPARE_FORMAT = "wit-builder-stats-compare"
VERSION = 1

# Bins per metric: fixed, so that two datasets (compare mode) share them; values outside go to the end bins.
SAMPLE_SPECS = {
    "caption_words": HistSpec(linear_edges(0, 80, 40)),
    "caption_chars": HistSpec(linear_edges(0, 400, 40)),
    "caption_tokens": HistSpec(linear_edges(0, 80, 40)),  # its sum is what top_tokens' shares divide by
    fields.ORIGINAL_WIDTH: HistSpec(linear_edges(0, 4096, 32)),
    fields.ORIGINAL_HEIGHT: HistSpec(linear_edges(0, 4096, 32)),
    "aspect": HistSpec(log_edges(0.1, 10.0, 40), log=True),  # original width / height
    fields.WIDTH: HistSpec(linear_edges(0, 1024, 32)),
    fields.HEIGHT: HistSpec(linear_edges(0, 1024, 32)),
    fields.BYTES: HistSpec(log_edges(256, 16 * 2**20, 32), log=True),  # 256 B .. 16 MiB, two bins an octave
    fields.CLIP_SCORE: HistSpec(linear_edges(-0.2, 1.0, 60)),
}
GROUP_SIZE_SPEC = HistSpec(linear_edges(2, 34, 32))  # a group is at least a survivor and one duplicate

# Duplicate kinds and the reasons whose `detail` names the group's survivor.
DUPLICATE_KINDS = {
    reasons.DUPLICATE_IMAGE: "exact",
    reasons.NEAR_DUPLICATE_IMAGE: "near",
    reasons.SEMANTIC_DUPLICATE: "semantic",
}
EVAL_REASONS = (reasons.EVAL_CONTAMINATION, reasons.EVAL_SIMILAR)
# A host's fetch outcome: the response, or the bytes it sent, was unusable.
FETCH_OUTCOME_STAGES = (reasons.FETCH, reasons.IMAGE)
# What rejects a candidate before query balancing sees it; image dedup reasons come later though their stage is dedup.
PRE_BALANCE_STAGES = (reasons.SOURCE, reasons.CRAWL, reasons.TEXT)
PRE_BALANCE_REASONS = (reasons.DUPLICATE_URL, reasons.DUPLICATE_PAIR, reasons.SEEN_BEFORE)

NO_LANGUAGE = "none"  # the caption was too short for a language guess (lang is null)
NO_DOMAIN = "(none)"  # a row without a usable URL (blocklisted rejections keep none)
KEPT = "kept"
_TOKEN = re.compile(r"\w+")


def sample_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """The histogrammed quantities of one kept sample row (None where unknown)."""
    caption = row.get(fields.CAPTION) or ""
    ow, oh = row.get(fields.ORIGINAL_WIDTH), row.get(fields.ORIGINAL_HEIGHT)
    return {
        "caption_words": len(caption.split()),
        "caption_chars": len(caption),
        "caption_tokens": len(caption_tokens(caption)),
        fields.ORIGINAL_WIDTH: ow,
        fields.ORIGINAL_HEIGHT: oh,
        "aspect": ow / oh if ow and oh else None,
        fields.WIDTH: row.get(fields.WIDTH),
        fields.HEIGHT: row.get(fields.HEIGHT),
        fields.BYTES: row.get(fields.BYTES),
        fields.CLIP_SCORE: row.get(fields.CLIP_SCORE),
    }


def caption_tokens(caption: str | None) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and _), punctuation dropped."""
    return _TOKEN.findall((caption or "").lower())


def language(row: Mapping[str, Any]) -> str:
    return row.get(fields.LANG) or NO_LANGUAGE


def domain(url: str | None) -> str:
    """The host (with port, lower-cased, no user info) of a URL: what politeness and the report count by."""
    try:
        netloc = urlsplit(url or "").netloc
    except ValueError:
        return NO_DOMAIN
    return netloc.rsplit("@", 1)[-1].lower() or NO_DOMAIN


def sample_hash(seed: int, key: str) -> int:
    """A seeded, platform-independent 63-bit hash (Beam's int coder is signed 64-bit): the samples shown are those
    with the smallest."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


def top_list(counts: Iterable[tuple[Any, int]], total: int, k: int | None = None) -> list[dict]:
    """[{"value", "count", "share"}] most frequent first, ties by value; share of `total`."""
    ranked = sorted(counts, key=most_frequent_first)[:k]
    return [{"value": str(v), "count": n, "share": n / total if total else 0.0} for v, n in ranked]


def _stage_order(stage: str) -> tuple[int, str]:
    return (reasons.STAGES.index(stage) if stage in reasons.STAGES else len(reasons.STAGES)), stage


def rejection_counts(counts: Mapping[str, Mapping[str, int]]) -> dict[tuple[str, str], int]:
    """{(stage, reason): n} of the manifest's funnel counts, "kept" entries left out."""
    return {(s, r): n for s, by in counts.items() for r, n in by.items() if r != KEPT}


def funnel(counts: Mapping[str, Mapping[str, int]], kept: int) -> dict:
    """The contract's funnel from the manifest's counts: candidates = kept + every rejection."""
    rejected = rejection_counts(counts)
    candidates = kept + sum(rejected.values())
    stages = []
    for stage in sorted({s for s, _ in rejected}, key=_stage_order):
        by = [(r, n) for (s, r), n in rejected.items() if s == stage]
        stages.append(
            {
                "stage": stage,
                "rejected": sum(n for _, n in by),
                "reasons": [
                    {
                        "reason": r,
                        "count": n,
                        "share": n / candidates if candidates else 0.0,
                        "description": reasons.REASONS[r].description if reasons.is_known(r) else "",
                    }
                    for r, n in sorted(by, key=most_frequent_first)
                ],
            }
        )
    return {"candidates": candidates, "kept": kept, "stages": stages}


def reason_total(counts: Mapping[str, Mapping[str, int]], *codes: str) -> int:
    return sum(n for (_, r), n in rejection_counts(counts).items() if r in codes)


def reaching_balance(counts: Mapping[str, Mapping[str, int]], kept: int) -> int:
    """Candidates that query balancing judged: all but those rejected before it."""
    early = sum(
        n for (s, r), n in rejection_counts(counts).items() if s in PRE_BALANCE_STAGES or r in PRE_BALANCE_REASONS
    )
    return funnel(counts, kept)["candidates"] - early


def gini(count_of_counts: Mapping[int, int]) -> float:
    """Gini coefficient of per-domain counts given as {count: domains with that count}: exact, in memory of the
    number of distinct counts (at most about sqrt(2 x samples)), not of domains."""
    n = sum(count_of_counts.values())
    total = sum(c * m for c, m in count_of_counts.items())
    if n == 0 or total == 0:
        return 0.0
    weighted, before = 0, 0  # sum of rank x count over the ascending order; domains ranked so far
    for c, m in sorted(count_of_counts.items()):
        weighted += c * (m * before + m * (m + 1) // 2)
        before += m
    return 2 * weighted / (n * total) - (n + 1) / n


def top_share(count_of_counts: Mapping[int, int], fraction: float) -> float:
    """Share of the total held by the largest ceil(fraction x domains) domains (at least one)."""
    n = sum(count_of_counts.values())
    total = sum(c * m for c, m in count_of_counts.items())
    if n == 0 or total == 0:
        return 0.0
    left, held = max(1, math.ceil(fraction * n)), 0
    for c, m in sorted(count_of_counts.items(), reverse=True):
        take = min(m, left)
        held, left = held + c * take, left - take
        if left == 0:
            break
    return held / total


def log_rank_points(n: int, points: int = 200) -> list[int]:
    """At most `points` ranks in 1..n, log-spaced, always with 1 and n."""
    if n <= 0:
        return []
    if n <= points:
        return list(range(1, n + 1))
    step = math.log(n) / (points - 1)
    return sorted({min(n, round(math.exp(i * step))) for i in range(points)} | {1, n})


def rank_curve(counts: Iterable[int], points: int = 200) -> list[list[int]]:
    """[[rank, count]] of the nonzero counts sorted descending (rank 1 = largest), at log-spaced ranks."""
    ranked = sorted((c for c in counts if c > 0), reverse=True)
    return [[r, ranked[r - 1]] for r in log_rank_points(len(ranked), points)]


def balance_section(
    entries: list[tuple[str, int, int]], t: int | None, no_match: int, reaching: int, k: int = 25
) -> dict:
    """The balance section from (entry, count_before, count_after) rows (balance_counts.parquet)."""
    matched = sorted((e for e in entries if e[1] > 0), key=lambda e: (-e[1], e[0]))
    row = lambda e: {"entry": e[0], "before": e[1], "after": e[2]}  # noqa: E731
    return {
        "t": t,
        "entries": len(entries),
        "matched_entries_before": len(matched),
        "matched_entries_after": sum(1 for e in entries if e[2] > 0),
        "curve_before": rank_curve(e[1] for e in entries),
        "curve_after": rank_curve(e[2] for e in entries),
        "head": [row(e) for e in matched[:k]],
        "tail": [row(e) for e in matched[max(k, len(matched) - k) :]],  # the smallest, none of them in head
        "no_match_share": no_match / reaching if reaching else 0.0,
    }


def duplicate_section(hist: dict | None) -> dict | None:
    """Dup = {"groups", "removed", "sizes"} from the histogram of group sizes (size = survivor + members)."""
    if hist is None:
        return None
    return {"groups": hist["count"], "removed": int(hist["sum"]) - hist["count"], "sizes": hist}


def _hist_summary(out: dict, name: str, hist: dict | None, stats: tuple[str, ...]) -> None:
    if hist is None:
        return
    for s in stats:
        out[f"{name}.{s}"] = hist[s] if s in ("mean", "count") else hist["quantiles"][s]


def summary(stats: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Flat scalars of a dataset's stats under names stable across datasets: what compare mode diffs."""
    f, cap, img, src = stats["funnel"], stats["captions"], stats["images"], stats["sources"]
    out: dict[str, Any] = {
        "rows": stats["dataset"]["rows"],
        "shards": stats["dataset"]["shards"],
        "bytes": stats["dataset"]["bytes"],
        "candidates": f["candidates"],
        "kept": f["kept"],
        "kept_share": f["kept"] / f["candidates"] if f["candidates"] else 0.0,
        "boilerplate_share": cap["boilerplate_share"],
        "domains": src["domains"],
        "gini_domains": src["gini"],
        "top1pct_share": src["top1pct_share"],
        "top10pct_share": src["top10pct_share"],
        "eval_contamination": stats["duplicates"]["eval_contamination"],
    }
    for stage in f["stages"]:
        out[f"rejected.{stage['stage']}"] = stage["rejected"]
        for r in stage["reasons"]:
            out[f"rejected.{stage['stage']}.{r['reason']}"] = r["count"]
    for top, name in ((cap["languages"], "lang_share"), (img["formats"], "format_share")):
        for t in top:
            out[f"{name}.{t['value']}"] = t["share"]
    _hist_summary(out, "caption_words", cap["words"], ("mean", "p50", "p95"))
    _hist_summary(out, "caption_chars", cap["chars"], ("mean", "p50", "p95"))
    for name in (fields.ORIGINAL_WIDTH, fields.ORIGINAL_HEIGHT, "aspect", fields.WIDTH, fields.HEIGHT):
        _hist_summary(out, name, img[name], ("p50",))
    _hist_summary(out, fields.BYTES, img[fields.BYTES], ("mean", "p50"))
    for kind, dup in stats["duplicates"].items():
        if isinstance(dup, dict):
            out[f"dup.{kind}.groups"], out[f"dup.{kind}.removed"] = dup["groups"], dup["removed"]
    if stats["balance"] is not None:
        b = stats["balance"]
        out["balance.matched_entries_before"] = b["matched_entries_before"]
        out["balance.matched_entries_after"] = b["matched_entries_after"]
        out["balance.no_match_share"] = b["no_match_share"]
    if stats["scores"] is not None:
        _hist_summary(out, fields.CLIP_SCORE, stats["scores"]["clip_score"], ("mean", "p5", "p50", "p95"))
    return out
