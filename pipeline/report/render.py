"""The stats report as one self-contained HTML page (Jinja2 + inline matplotlib SVG), for stats, compare and runs."""

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from pipeline.report import charts
from pipeline.report.scaling import scaling_charts, short_names
from schemas import fields

STATS_FORMAT = "wit-builder-stats"
COMPARE_FORMAT = "wit-builder-stats-compare"
RUN_FORMAT = "wit-builder-run-stats"
INDEX = "index.html"
DASH = "—"

# Sections of the dataset page: (anchor, heading, note shown when the section is null).
SECTIONS = (
    ("funnel", "Funnel", "no funnel counts in these stats"),
    ("captions", "Captions", "no caption statistics in these stats"),
    ("images", "Images", "no image statistics in these stats"),
    ("sources", "Sources", "no source statistics in these stats"),
    ("balance", "Balance", "not balanced: the build ran without a query list"),
    ("duplicates", "Duplicates", "no duplicate statistics in these stats"),
    ("scores", "Scores", "no CLIP scores: the dataset has no embeddings (wit encode, then wit filter, add them)"),
    ("samples", "Samples", "no samples in these stats"),
)
IMAGE_HISTS = (
    (fields.ORIGINAL_WIDTH, "original width (px)"),
    (fields.ORIGINAL_HEIGHT, "original height (px)"),
    ("aspect", "original aspect ratio (w / h)"),  # derived in the stats job: no schema field
    (fields.WIDTH, "stored width (px)"),
    (fields.HEIGHT, "stored height (px)"),
    (fields.BYTES, "stored file size (bytes)"),
)
DUP_KINDS = (("exact", "Exact (same image bytes)"), ("near", "Near (perceptual hash)"), ("semantic", "Semantic (CLIP)"))


# ---- number formatting (Jinja filters) -----------------------------------------------------------------------------


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    """12345 -> '12,345'; 0.031415 -> '0.0314'; 1234.5 -> '1,234'; None -> '—'."""
    if not _is_num(x):
        return DASH if x is None else str(x)
    if isinstance(x, int) or (float(x).is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:,.2f}".rstrip("0").rstrip(".")
    return f"{x:.{digits}g}"


def fmt_pct(x: Any) -> str:
    """A share in [0, 1] as a percentage: 0.1234 -> '12.3%', 0.00012 -> '0.012%'."""
    if not _is_num(x):
        return DASH
    if x == 0 or abs(x) >= 0.01:
        return f"{x:.1%}"
    return f"{x * 100:.2g}%"


def fmt_bytes(x: Any) -> str:
    if not _is_num(x):
        return DASH
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(x) < 1000 or unit == "TB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1000
    return DASH  # unreachable


def fmt_signed(x: Any, share: bool = False, rel: bool = False) -> str:
    """A difference: '+1,234', '−0.5'; for shares in percentage points '+1.2 pp'; `rel` (a ratio) as '+12.5%'."""
    if not _is_num(x):
        return DASH
    sign = "+" if x > 0 else ("−" if x < 0 else "±")
    if rel:
        return sign + fmt_pct(abs(x))
    if share:
        return f"{sign}{abs(x) * 100:.2g} pp" if abs(x) < 0.01 else f"{sign}{abs(x) * 100:.1f} pp"
    return sign + fmt_num(abs(x))


def data_uri(value: Any) -> str | None:
    """Only an inline image may become an <img src>: anything else would be a network fetch from the page."""
    if isinstance(value, str) and value.startswith("data:image/"):
        return value
    return None


def flatten(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested config as (dotted.key, value) rows for a table."""
    if isinstance(config, Mapping):
        rows = []
        for key, value in config.items():
            rows.extend(flatten(value, f"{prefix}{key}."))
        return rows or [(prefix.rstrip("."), "{}")]
    return [(prefix.rstrip("."), config if isinstance(config, str) else _json(config))]


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _metric_kind(name: str) -> str:
    """How a summary metric reads: shares ('kept_share', 'lang_share.en') as percentages, byte sizes as KB/MB."""
    if "share" in name:
        return "share"
    return "bytes" if name == fields.BYTES or name.startswith(f"{fields.BYTES}.") else "number"


def fmt_metric(value: Any, name: str) -> str:
    kind = _metric_kind(name)
    return fmt_pct(value) if kind == "share" else fmt_bytes(value) if kind == "bytes" else fmt_num(value)


def fmt_metric_delta(delta: Any, name: str) -> str:
    """B - A of a summary metric: percentage points for shares, a signed size for bytes, a signed number else."""
    kind = _metric_kind(name)
    if kind == "bytes" and _is_num(delta):
        return ("+" if delta > 0 else "−" if delta < 0 else "±") + fmt_bytes(abs(delta))
    return fmt_signed(delta, share=kind == "share")


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape on everything: captions, URLs and domains are untrusted web text.
    env = Environment(
        loader=PackageLoader("pipeline.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, pct=fmt_pct, bytes=fmt_bytes, signed=fmt_signed, data_uri=data_uri)
    env.filters["sentence"] = lambda text: text[:1].upper() + text[1:]  # unlike |capitalize, keeps "CLIP"
    env.filters.update(metric=fmt_metric, metric_delta=fmt_metric_delta)
    env.globals.update(flatten=flatten, DASH=DASH, fields=fields)
    return env


# ---- figures -------------------------------------------------------------------------------------------------------


def _fig(name: str, svg: str) -> Markup:
    """matplotlib's SVG is our markup (it escapes the text it draws); ids take the figure's name, to stay unique."""
    return Markup(f'<figure class="plot" id="fig-{name}">{charts.prefix_ids(svg, name)}</figure>')


def _median(hist: Mapping[str, Any] | None) -> list[tuple[str, float]]:
    p50 = (hist or {}).get("quantiles", {}).get("p50")
    return [(f"median {fmt_num(p50)}", p50)] if _is_num(p50) else []


def _reason_labels(funnel: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    pairs = [(f"{s['stage']} · {r['reason']}", r["count"]) for s in funnel["stages"] for r in s["reasons"]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _funnel_rows(funnel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The funnel table: per stage, what it removed and what was left after it."""
    left, rows = funnel["candidates"], []
    for stage in funnel["stages"]:
        left -= stage["rejected"]
        rows.append(
            {**stage, "left": left, "left_share": left / funnel["candidates"] if funnel["candidates"] else None}
        )
    return rows


def _dataset_figures(stats: Mapping[str, Any], prefix: str = "") -> dict[str, Markup]:
    figs: dict[str, Markup] = {}

    def add(name: str, make: Callable[[], str]) -> None:
        figs[name] = _fig(prefix + name, make())

    if funnel := stats.get("funnel"):
        labels, counts = _reason_labels(funnel)
        add("funnel", lambda: charts.bars(labels, counts, "rejected candidates", "Rejections by stage and reason"))
    if cap := stats.get("captions"):
        add("words", lambda: charts.histogram(cap["words"], "words per caption", markers=_median(cap["words"])))
        add("chars", lambda: charts.histogram(cap["chars"], "characters per caption", markers=_median(cap["chars"])))
        langs = cap["languages"][:15]
        add("languages", lambda: charts.bars([t["value"] for t in langs], [t["count"] for t in langs], "samples"))
    if images := stats.get("images"):
        for key, label in ((k, lab) for k, lab in IMAGE_HISTS if images.get(k)):
            add(key, lambda h=images[key], label=label: charts.histogram(h, label, markers=_median(h)))
    if bal := stats.get("balance"):
        curves = [("before balancing", bal["curve_before"]), ("after balancing", bal["curve_after"])]
        add("balance", lambda: charts.loglog(curves, "entry rank (1 = most matched)", "samples matching", cap=bal["t"]))
    dups = stats.get("duplicates") or {}
    for kind in (k for k, _ in DUP_KINDS if dups.get(k)):
        sizes = dups[kind]["sizes"]
        add(f"dup-{kind}", lambda h=sizes: charts.histogram(h, "group size (survivor + removed)", ylabel="groups"))
    if scores := stats.get("scores"):
        marks = [(f"threshold {fmt_num(scores['threshold'])}", scores["threshold"])] if scores.get("threshold") else []
        hist = scores[fields.CLIP_SCORE]
        add(fields.CLIP_SCORE, lambda: charts.histogram(hist, "CLIP score (image-text cosine)", markers=marks))
    return figs


def _dataset_page(stats: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    sections = [{"id": key, "title": title, "note": note, "data": stats.get(key)} for key, title, note in SECTIONS]
    outcome_reasons, outcome_rows = _outcomes(stats.get("sources"))
    context = {
        "s": stats,
        "title": f"Dataset report: {stats['dataset']['path']}",
        "toc": [("overview", "Overview")] + [(x["id"], x["title"]) for x in sections],
        "sections": sections,
        "figs": _dataset_figures(stats),
        "funnel_rows": _funnel_rows(stats["funnel"]) if stats.get("funnel") else [],
        "outcome_reasons": outcome_reasons,
        "outcome_rows": outcome_rows,
        "image_hists": IMAGE_HISTS,
        "dup_kinds": DUP_KINDS,
    }
    return "dataset.html", context


def _outcomes(sources: Mapping[str, Any] | None, limit: int = 8) -> tuple[list[str], list[dict[str, Any]]]:
    """The fetch-outcome table: columns for the most frequent failure reasons over the hosts shown, the rest summed."""
    hosts = (sources or {}).get("fetch_outcomes") or []
    totals: dict[str, int] = {}
    for host in hosts:
        for reason, n in host["reasons"].items():
            totals[reason] = totals.get(reason, 0) + n
    columns = sorted(totals, key=lambda r: (-totals[r], r))[:limit]
    rows = []
    for host in hosts:
        cells = [host["reasons"].get(r, 0) for r in columns]
        rows.append({"host": host["host"], "kept": host["kept"], "cells": cells,
                     "other": sum(host["reasons"].values()) - sum(cells)})  # fmt: skip
    return columns, rows


# ---- compare and run pages -----------------------------------------------------------------------------------------


def _both(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, *path: str) -> list[tuple[str, Any]]:
    out = []
    for label, stats in (("A", a), ("B", b)):
        for key in path:
            stats = stats.get(key) if isinstance(stats, Mapping) else None
        if stats:
            out.append((label, stats))
    return out


COMPARE_HISTS = (
    (("captions", "words"), "words per caption"),
    (("captions", "chars"), "characters per caption"),
    (("images", fields.ORIGINAL_WIDTH), "original width (px)"),
    (("images", fields.ORIGINAL_HEIGHT), "original height (px)"),
    (("images", "aspect"), "original aspect ratio (w / h)"),
    (("images", fields.BYTES), "stored file size (bytes)"),
    (("scores", fields.CLIP_SCORE), "CLIP score"),
)


COMPARE_TOC = [("overview", "Overview"), ("diff", "All metrics"), ("funnel", "Funnel"),
               ("distributions", "Distributions"), ("balance", "Balance"), ("sources", "Sources"),
               ("samples", "Samples")]  # fmt: skip


def _compare_reasons(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (stage, reason) present in either funnel, in A's order then B's extras."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for side, stats in (("a", a), ("b", b)):
        for stage in (stats.get("funnel") or {}).get("stages", []):
            for r in stage["reasons"]:
                row = rows.setdefault((stage["stage"], r["reason"]), {"stage": stage["stage"], "reason": r["reason"]})
                row[side], row[f"{side}_share"] = r["count"], r["share"]
    for row in rows.values():
        row["delta"] = row.get("b", 0) - row.get("a", 0)
    return list(rows.values())


def _compare_page(stats: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    a, b = stats["a"], stats["b"]
    reasons = _compare_reasons(a, b)
    figs = {
        "funnel": _fig(
            "cmp-funnel",
            charts.grouped_bars(
                [f"{r['stage']} · {r['reason']}" for r in reasons],
                [("A", [r.get("a", 0) for r in reasons]), ("B", [r.get("b", 0) for r in reasons])],
                "rejected candidates",
                "Rejections by stage and reason",
            ),
        )
    }
    hists = []
    for path, label in COMPARE_HISTS:
        pair = _both(a, b, *path)
        if pair:
            name = "-".join(path)
            figs[name] = _fig(f"cmp-{name}", charts.histograms(pair, label))
            hists.append((name, label, pair[0][0] if len(pair) == 1 else ""))  # a one-sided plot says whose it is
    curves = []
    for side, bal in _both(a, b, "balance"):
        curves += [(f"{side} before", bal["curve_before"]), (f"{side} after", bal["curve_after"])]
    if curves:
        figs["balance"] = _fig("cmp-balance", charts.loglog(curves, "entry rank", "samples matching"))
    context = {
        "s": stats,
        "a": a,
        "b": b,
        "title": f"Compare: {a['dataset']['path']} vs {b['dataset']['path']}",
        "toc": COMPARE_TOC,
        "figs": figs,
        "reasons": reasons,
        "hists": hists,
    }
    return "compare.html", context


def _last(values: Sequence[Any]) -> Any:
    return next((v for v in reversed(values) if v is not None), None)


def _run_page(stats: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    train, ev = stats["train"], stats["eval"]
    steps = train["step"]
    figs = {}
    for key, label in (("loss", "loss"), ("lr", "learning rate"), ("temperature", "temperature"),
                       ("samples_per_s", "samples / s")):  # fmt: skip
        figs[key] = _fig(f"run-{key}", charts.series([("", steps, train[key])], "step", label, label.capitalize()))
    zero_shot = [("top-1", ev["step"], ev["top1"]), ("top-5", ev["step"], ev["top5"])]
    figs["zeroshot"] = _fig("run-zeroshot", charts.series(zero_shot, "step", "accuracy", "Zero-shot accuracy"))
    if stats.get("runs"):
        figs |= {key: _fig("run-" + key.replace("_", "-"), svg) for key, svg in scaling_charts(stats["runs"]).items()}
    rates = [v for v in train["samples_per_s"] if v is not None]
    losses = [v for v in train["loss"] if v is not None]
    headline = {
        "steps": _last(steps),
        "samples": _last(train["samples"]),
        "final_loss": _last(train["loss"]),
        "min_loss": min(losses) if losses else None,
        "top1": _last(ev["top1"]),
        "top5": _last(ev["top5"]),
        "best_top1": max((v for v in ev["top1"] if v is not None), default=None),
        "samples_per_s": sum(rates) / len(rates) if rates else None,
    }
    context = {
        "s": stats,
        "title": f"Training run: {stats['run']}",
        "toc": [("overview", "Overview"), ("curves", "Training curves"), ("eval", "Zero-shot")]
        + ([("scaling", "Scaling")] if stats.get("runs") else [])
        + [("config", "Config")],
        "figs": figs,
        "headline": headline,
        "eval_rows": list(zip(ev["step"], ev["top1"], ev["top5"], strict=False)),
        "run_names": short_names([r["run"] for r in stats.get("runs") or []]),
    }
    return "run.html", context


PAGES: dict[str, Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    STATS_FORMAT: _dataset_page,
    COMPARE_FORMAT: _compare_page,
    RUN_FORMAT: _run_page,
}


def render_html(stats: Mapping[str, Any]) -> str:
    """The page for a stats dict of any of the three formats (ValueError for anything else)."""
    page = PAGES.get(stats.get("format")) if isinstance(stats, Mapping) else None
    if page is None:
        got = stats.get("format") if isinstance(stats, Mapping) else type(stats).__name__
        raise ValueError(f"not a stats dict: format {got!r}, expected one of {', '.join(PAGES)}")
    template, context = page(stats)
    return _environment().get_template(template).render(**context)


def render_report(stats: dict, out_dir: Path) -> Path:
    """Write OUT_DIR/index.html for `stats` (dataset, compare or run format), atomically; return its path."""
    from pipeline import fsio  # here, not at the top: it imports Beam, which rendering alone does not need

    html = render_html(stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / INDEX
    with fsio.atomic_write(target) as f:
        f.write(html.encode("utf-8"))
    os.chmod(target, 0o644)  # readable by a web server or a colleague whatever the umask
    return target
