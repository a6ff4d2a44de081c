"""Compare mode of the stats report: two datasets' stats side by side, every summary metric with its difference."""

from typing import Any

from pipeline.report.stats import COMPARE_FORMAT, VERSION


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_stats(a: dict, b: dict) -> dict:
    """{"format", "version", "a", "b", "diff"}: diff over the union of both summaries, sorted by metric name, with
    delta = b - a where both are numbers (a metric one side lacks is null on that side)."""
    sa, sb = a.get("summary", {}), b.get("summary", {})
    diff = []
    for metric in sorted(sa.keys() | sb.keys()):
        x, y = _number(sa.get(metric)), _number(sb.get(metric))
        diff.append({"metric": metric, "a": x, "b": y, "delta": None if x is None or y is None else y - x})
    return {"format": COMPARE_FORMAT, "version": VERSION, "a": a, "b": b, "diff": diff}
