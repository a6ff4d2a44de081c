"""The scaling view of a training-run page: several runs' zero-shot top-1 against samples seen and against the pairs
they trained on, as the CLIP paper draws data scale, and the runs' short names."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.report import charts

_DATASET_LINES = ("-", "--", ":", "-.")  # a line style per dataset: curated solid, raw dashed, ...


def _dataset(run: Mapping[str, Any]) -> str:
    return run.get("dataset") or "?"


def _label(run: Mapping[str, Any]) -> str:
    rows = run.get("rows")
    name = run.get("dataset") or Path(run["run"]).name
    return f"{name}, {int(rows):,} pairs" if rows is not None else name


def _styles(runs: Sequence[Mapping[str, Any]], kinds: list[str]) -> list[dict[str, Any]]:
    """A line style per dataset and a colour per size rank within it, so the runs of one web size share a colour
    across datasets."""
    rank: dict[int, int] = {}
    for kind in kinds:
        mine = [i for i, r in enumerate(runs) if _dataset(r) == kind]
        for place, i in enumerate(sorted(mine, key=lambda i: (runs[i].get("rows") is None, runs[i].get("rows") or 0))):
            rank[i] = place
    return [{"colour": rank[i], "linestyle": _DATASET_LINES[kinds.index(_dataset(r)) % 4]} for i, r in enumerate(runs)]


def scaling_charts(runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """SVGs by name: "scaling_seen", zero-shot top-1 against samples seen (a line per run), and "scaling_size", the
    last top-1 against the pairs a run trained on (a line per dataset, e.g. curated vs raw)."""
    kinds = list(dict.fromkeys(_dataset(r) for r in runs))
    seen = [(_label(r), r["eval"]["samples"], r["eval"]["top1"]) for r in runs]
    by_dataset: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        top1 = next((v for v in reversed(r["eval"]["top1"]) if v is not None), None)
        if r.get("rows") is not None and top1 is not None:
            by_dataset.setdefault(_dataset(r), []).append((r["rows"], top1))
    sizes = [(name, *zip(*sorted(points), strict=True)) for name, points in by_dataset.items()]
    size_styles = [{"colour": 0, "linestyle": _DATASET_LINES[kinds.index(name) % 4]} for name, *_ in sizes]
    return {
        "scaling_seen": charts.series(seen, "samples seen", "top-1", "Zero-shot top-1 against samples seen",
                                      styles=_styles(runs, kinds)),
        "scaling_size": charts.series(sizes, "training pairs", "top-1", "Zero-shot top-1 against dataset size",
                                      styles=size_styles),
    }  # fmt: skip


def short_names(paths: Sequence[str]) -> list[str]:
    """Paths without the folders every one of them starts and ends with: what tells them apart."""
    parts = [Path(p).parts for p in paths]
    if len(parts) < 2:
        return [Path(p).name or p for p in paths]
    lead = 0
    while all(len(p) > lead + 1 for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    trail = 0
    while all(len(p) > lead + trail + 1 for p in parts) and len({p[-1 - trail] for p in parts}) == 1:
        trail += 1
    return ["/".join(p[lead : len(p) - trail]) for p in parts]
