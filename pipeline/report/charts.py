"""The report's matplotlib figures: data in, a self-contained inline SVG string out, one shared style."""

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Colour-blind-safe (Okabe-Ito); A/B in compare mode are always the first two.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH_IN, HEIGHT_IN = 6.0, 2.8

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    # Text stays text (small, selectable, no glyph paths); the browser draws it with a local font, nothing fetched.
    "svg.fonttype": "none",
    # A fixed salt makes the ids inside an SVG, and so the whole page, identical from run to run.
    "svg.hashsalt": "wit-builder-report",
}


def _style() -> dict[str, Any]:
    from cycler import cycler  # a matplotlib dependency: imported only when a figure is drawn

    return {**_STYLE, "axes.prop_cycle": cycler(color=PALETTE)}


def _figure(height: float = HEIGHT_IN, width: float = WIDTH_IN, *, fit: bool = False):
    """A figure with one axes. Fixed margins (in inches, so every plot lines up) unless `fit`: constrained layout
    costs a second draw, so only the bar charts, whose label widths vary, pay for it."""
    from matplotlib.figure import Figure

    if fit:
        fig = Figure(figsize=(width, height), layout="constrained")
    else:
        fig = Figure(figsize=(width, height))
        fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.3 / height)
    return fig, fig.add_subplot()


def _to_svg(fig) -> str:
    """The figure as an <svg> element (no XML prolog or doctype, which are not allowed inside HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    # The RDF metadata block only names namespaces by URL; dropping it leaves no URL in the page that is not ours.
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], count=1, flags=re.S)


def _draw(build, *args, **kwargs) -> str:
    import matplotlib

    with matplotlib.rc_context(_style()):
        fig = build(*args, **kwargs)
        return _to_svg(fig)


def prefix_ids(svg: str, prefix: str) -> str:
    """Make every id in `svg` start with `prefix`, so many inline SVGs can share one HTML page without clashes."""
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if not ids:
        return svg
    pattern = re.compile(r'(\bid="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def _plain(v: float, _pos: Any = None) -> str:
    """Tick labels as plain numbers ('1,000', '0.5'): matplotlib's default log labels are mathtext, which is slow
    to lay out and reads worse than a number."""
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _plain_axis(ax, axis: str = "y", *, integer: bool = False) -> None:
    """Plain-number tick labels on `axis`; on a log axis 1-2-5 ticks when it spans few decades, decades otherwise;
    `integer`: a linear axis of counts gets whole-number ticks only."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    if integer:
        target.set_major_locator(MaxNLocator(integer=True))
    if (ax.get_yscale() if axis == "y" else ax.get_xscale()) == "log":
        lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
        lo = max(lo, 1e-12)
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for steps in ((1, 2, 5), (1,), None):
            if steps is None:  # very wide: every other decade
                ticks = [10.0**k for k in range(first, last + 1, 2)]
                break
            ticks = [m * 10.0**k for k in range(first, last + 1) for m in steps if lo <= m * 10.0**k <= hi]
            if len(ticks) <= 8:
                break
        if len(ticks) < 2:  # a narrow range (aspect ratios 1.2 to 1.5): a few rounded points across it
            ticks = sorted({float(f"{lo * (hi / lo) ** (i / 3):.2g}") for i in range(4)})
            ticks = [t for t in ticks if lo <= t <= hi] or ticks
        target.set_major_locator(FixedLocator(ticks))
        target.set_minor_locator(NullLocator())
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(_plain))


def _empty(ax, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def _log_y_if_wide(ax, values: Sequence[float]) -> None:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) >= 1000:
        ax.set_yscale("log")


# ---- histograms ----------------------------------------------------------------------------------------------------


def _hist_fig(
    hists: Sequence[tuple[str, Mapping[str, Any]]],
    xlabel: str,
    title: str,
    markers: Sequence[tuple[str, float]],
    ylabel: str,
):
    fig, ax = _figure()
    overlay = len(hists) > 1
    drawn = False
    for i, (label, hist) in enumerate(hists):
        counts, edges = hist["counts"], hist["edges"]
        total = sum(counts)
        if not total:
            continue
        drawn = True
        # Overlays compare shapes: datasets of different size are put on one scale as shares.
        heights = [c / total for c in counts] if overlay else counts
        colour = PALETTE[i % len(PALETTE)]
        ax.stairs(heights, edges, fill=True, alpha=0.25 if overlay else 0.85, color=colour)
        if overlay:
            ax.stairs(heights, edges, color=colour, linewidth=1.4, label=label)
        if hist.get("log"):
            ax.set_xscale("log")
    if not drawn:
        _empty(ax)
    else:
        for j, (label, x) in enumerate(markers):
            ax.axvline(x, color=PALETTE[5] if j == 0 else "#555", linestyle="--", linewidth=1.2, label=label)
        ax.set_xlim(*_occupied(hists, [x for _, x in markers]))
        ax.set_ylabel(f"share of {ylabel}" if overlay else ylabel)
        if not overlay:
            _log_y_if_wide(ax, hists[0][1]["counts"])
        _plain_axis(ax, "x")
        _plain_axis(ax, "y", integer=not overlay)
        if overlay:
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if overlay or markers:
            ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left")
    return fig


def _occupied(hists: Sequence[tuple[str, Mapping[str, Any]]], keep: Sequence[float]) -> tuple[float, float]:
    """The x range of the non-empty bins, one bin of margin each side, widened to show every marker: fixed bins
    are chosen for any dataset, so a small one would otherwise be a sliver at one end of the axis."""
    lo, hi = math.inf, -math.inf
    for _, hist in hists:
        counts, edges = hist["counts"], hist["edges"]
        filled = [i for i, c in enumerate(counts) if c]
        if filled:
            lo = min(lo, edges[max(filled[0] - 1, 0)])
            hi = max(hi, edges[min(filled[-1] + 2, len(edges) - 1)])
    for x in keep:
        lo, hi = min(lo, x), max(hi, x)
    return lo, hi


def histogram(
    hist: Mapping[str, Any],
    xlabel: str,
    title: str = "",
    *,
    markers: Sequence[tuple[str, float]] = (),
    ylabel: str = "samples",
) -> str:
    """One contract `Hist` as bars (log x when its bins are log-spaced); `markers` are labelled vertical lines."""
    return _draw(_hist_fig, [("", hist)], xlabel, title, list(markers), ylabel)


def histograms(
    hists: Sequence[tuple[str, Mapping[str, Any]]], xlabel: str, title: str = "", *, ylabel: str = "samples"
) -> str:
    """Several `Hist`s of one metric overlaid as shares (compare mode): [(label, hist), ...]."""
    return _draw(_hist_fig, [(label, h) for label, h in hists if h], xlabel, title, [], ylabel)


# ---- bars ----------------------------------------------------------------------------------------------------------


def _bars_fig(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], xlabel: str, title: str):
    rows = max(len(labels), 1)
    fig, ax = _figure(height=min(max(1.2 + 0.24 * rows * max(len(series), 1) ** 0.5, 1.8), 11), fit=True)
    if not labels:
        _empty(ax)
        return fig
    band = 0.8 / len(series)
    top = max((v for _, values in series for v in values), default=0) or 1
    for i, (name, values) in enumerate(series):
        ys = [r + (i - (len(series) - 1) / 2) * band for r in range(len(labels))]
        bars = ax.barh(ys, values, height=band * 0.92, label=name or None, color=PALETTE[i % len(PALETTE)])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=2, fontsize=7, color="#333")
    ax.set_yticks(range(len(labels)), labels=[_clip(label, 48) for label in labels])
    ax.invert_yaxis()  # the largest (first) at the top, as in the table beside it
    ax.set_xlim(0, top * 1.15)  # room for the value labels
    ax.grid(axis="y", visible=False)
    _plain_axis(ax, "x", integer=True)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left")
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    return fig


def bars(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str = "") -> str:
    """Horizontal bars, first label at the top, each labelled with its value."""
    return _draw(_bars_fig, list(labels), [("", list(values))], xlabel, title)


def grouped_bars(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], xlabel: str, title: str = ""
) -> str:
    """Horizontal bars for several series side by side per label (compare mode)."""
    return _draw(_bars_fig, list(labels), [(n, list(v)) for n, v in series], xlabel, title)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- lines ---------------------------------------------------------------------------------------------------------


def _loglog_fig(curves: Sequence[tuple[str, Sequence[Sequence[float]]]], cap: float | None, xlabel, ylabel, title):
    fig, ax = _figure(height=3.2)
    drawn = False
    for i, (label, points) in enumerate(curves):
        pts = [(x, y) for x, y in points if x > 0 and y > 0]
        if pts:
            drawn = True
            ax.plot(*zip(*pts, strict=True), label=label, color=PALETTE[i % len(PALETTE)], linewidth=1.6)
    if not drawn:
        _empty(ax)
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        if cap:
            ax.axhline(cap, color="#555", linestyle="--", linewidth=1, label=f"cap t = {cap:,.0f}")
        ax.legend(frameon=False, fontsize=8)
        _plain_axis(ax, "x")
        _plain_axis(ax, "y")
    _label(ax, xlabel, ylabel, title)
    return fig


def loglog(
    curves: Sequence[tuple[str, Sequence[Sequence[float]]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    *,
    cap: float | None = None,
) -> str:
    """[(label, [[x, y], ...]), ...] as lines on log-log axes; `cap` draws a labelled horizontal line."""
    return _draw(_loglog_fig, list(curves), cap, xlabel, ylabel, title)


def _series_fig(series, xlabel, ylabel, title, logy, styles):
    lines = [(label, [(x, y) for x, y in zip(xs, ys, strict=False) if _finite(y)]) for label, xs, ys in series]
    below = sum(1 for label, pts in lines if label and pts) > 3  # many lines: the legend goes under the axes
    legend_in = 0.2 * math.ceil(len(lines) / 2) + 0.2 if below else 0.0
    fig, ax = _figure(height=2.6 + legend_in, width=5.2)
    if below:
        fig.subplots_adjust(bottom=(0.5 + legend_in) / (2.6 + legend_in), right=1 - 0.35 / 5.2)
    drawn = False
    for i, (label, pts) in enumerate(lines):
        if not pts:
            continue
        drawn = True
        style = styles[i] if styles else {}
        marker = {"marker": "o", "markersize": 3} if len(pts) <= 30 else {}
        colour = PALETTE[style.get("colour", i) % len(PALETTE)]
        ax.plot(*zip(*pts, strict=True), label=label or None, color=colour, linewidth=1.4,
                linestyle=style.get("linestyle", "-"), **marker)  # fmt: skip
    if not drawn:
        _empty(ax)
    else:
        if logy and all(y > 0 for _, _, ys in series for y in ys if _finite(y)):
            ax.set_yscale("log")
        if below:
            fig.legend(frameon=False, fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 0.0))
        elif len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        _plain_axis(ax, "x")
        _plain_axis(ax, "y")
    _label(ax, xlabel, ylabel, title)
    return fig


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")


def _finite(y: Any) -> bool:
    return isinstance(y, int | float) and math.isfinite(y)


def series(
    lines: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    *,
    logy: bool = False,
    styles: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """[(label, xs, ys), ...] as lines over a shared x (training steps); None or NaN values are left out. `styles`,
    one per line: {"colour": palette index, "linestyle": "-" or "--" ...}, so related lines can share a colour."""
    return _draw(_series_fig, list(lines), xlabel, ylabel, title, logy, styles)
