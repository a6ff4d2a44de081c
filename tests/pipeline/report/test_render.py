"""The stats page: valid, self-contained HTML with every section and number, escaped captions, compare and run pages,
and (in headless Chromium) no console errors, no requests and plots that actually draw."""

import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from stats_fixture import CANDIDATES, EVIL, make_compare, make_stats, write_metrics

from pipeline.report import charts, render
from pipeline.report.render import fmt_bytes, fmt_num, fmt_pct, fmt_signed, render_html, render_report
from pipeline.report.run_stats import run_stats

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Where a person can look at what the browser drew (the test's tmp_path has them too).
SCREENSHOTS = {
    "dataset": Path("/tmp/stats_screenshot.png"),
    "compare": Path("/tmp/stats_compare_screenshot.png"),
    "run": Path("/tmp/stats_run_screenshot.png"),
}


class ParsedPage(HTMLParser):
    """Parses a page strictly: every element closed in order; collects ids, links, sources, sections and text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: Counter[str] = Counter()
        self.text: list[str] = []
        self.feed(html)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed at end: {self.stack}")

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._record(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._record(tag, attrs)

    def _record(self, tag: str, attrs: list) -> None:
        self.tags[tag] += 1
        for name, value in attrs:
            if name == "id":
                self.ids.append(value)
            if name in ("src", "href", "xlink:href", "action", "poster", "srcset"):
                self.refs.append((tag, name, value or ""))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def assert_self_contained(page: ParsedPage) -> None:
    assert page.errors == []
    for tag in ("script", "link", "iframe", "object", "embed", "base"):
        assert page.tags[tag] == 0, tag
    ids = set(page.ids)
    assert len(ids) == len(page.ids), [i for i, n in Counter(page.ids).items() if n > 1][:5]
    for tag, attribute, value in page.refs:
        if value.startswith("#"):
            assert value[1:] in ids, f"<{tag} {attribute}={value!r}> points at no id"
        else:
            assert value.startswith("data:image/"), f"<{tag} {attribute}={value[:60]!r}> is not inline"


@pytest.fixture(scope="module")
def dataset_html() -> str:
    return render_html(make_stats())


@pytest.fixture(scope="module")
def compare_html() -> str:
    a = make_stats("/data/wit-a")
    b = make_stats("/data/wit-b", balance=False, scores=False, semantic=False, shift=1)
    return render_html(make_compare(a, b))


def test_number_formats() -> None:
    assert [fmt_num(12345), fmt_num(0.031415), fmt_num(1234.5), fmt_num(2.50), fmt_num(None)] == [
        "12,345", "0.0314", "1,234", "2.5", "—",
    ]  # fmt: skip
    assert [fmt_pct(0.1234), fmt_pct(0.00012), fmt_pct(0), fmt_pct(1)] == ["12.3%", "0.012%", "0.0%", "100.0%"]
    assert [fmt_bytes(999), fmt_bytes(123_456_789), fmt_bytes(2.5e12)] == ["999 B", "123.5 MB", "2.5 TB"]
    assert [fmt_signed(1500), fmt_signed(-2), fmt_signed(0), fmt_signed(-0.012, share=True)] == [
        "+1,500", "−2", "±0", "−1.2 pp",
    ]  # fmt: skip
    assert fmt_signed(0.125, rel=True) == "+12.5%"


def test_dataset_page_is_valid_and_self_contained(dataset_html: str) -> None:
    page = ParsedPage(dataset_html)
    assert_self_contained(page)
    assert dataset_html.startswith("<!DOCTYPE html>")
    for section, _, _ in render.SECTIONS:
        assert section in page.ids
    toc = [value for tag, _, value in page.refs if tag == "a"]
    assert toc == ["#overview"] + [f"#{s}" for s, _, _ in render.SECTIONS]


def test_dataset_page_shows_every_section_and_its_numbers(dataset_html: str) -> None:
    page = ParsedPage(dataset_html)
    text = page.plain
    # funnel: totals, a stage's share and what is left after it, a reason with its description
    assert f"{CANDIDATES:,} candidates" in text and "12,345" in text and "6,789" in text
    assert "text 2,000 16.2% 10,345 (83.8%)" in text
    assert "boilerplate 1,200 9.7% why boilerplate & <how>" in text
    assert "kept 55.0% 6,789" in text
    # captions, images, sources, balance, duplicates, scores
    assert "9.7% boilerplate caught" in text and "common caption 23 27 0.4%" in text and "tok49" in text
    assert "123.5 MB" in text and "jpg 6,000 88.4%" in text
    assert "321 distinct domains" in text and "12.3% top 1% of domains" in text and "0.789 Gini coefficient" in text
    assert "host0.example 1,200 900 300 75.0% 30" in text  # candidates, kept, rejected, kept share, failures
    assert "500,000 query entries" in text and "43,210 entries matched before 8.6% of entries" in text
    assert "head entry 0 50,000 1,000 2.0%" in text and "6.2% matching no entry" in text
    assert "1,500 removed Exact" in text and "44 removed Semantic" in text and "3 evaluation look-alikes" in text
    assert "http://dup.example/near/2.jpg" in text
    assert "0.28 threshold" in text
    # the figures: one per plot, each an inline SVG inside its <figure>
    figures = {i for i in page.ids if i.startswith("fig-")}
    expected = {"funnel", "words", "chars", "languages", "balance", "dup-exact", "dup-near", "dup-semantic"}
    expected |= {"clip_score"} | {key for key, _ in render.IMAGE_HISTS}
    assert figures == {f"fig-{name}" for name in expected}
    assert page.tags["svg"] == len(expected)
    # samples: 48 kept thumbnails, 2 duplicate survivors, 24 rejected rows with stage and reason
    assert page.tags["img"] == 48 + 2
    assert "r00023 balance over_query_cap rejected caption 23 http://host3.example/img/23.jpg" in text
    assert "r00005 balance over_query_cap (no caption) http://host1.example/img/5.jpg" in text
    assert "Kept (48)" in text and "Rejected (24)" in text


def test_captions_are_escaped_not_executed(dataset_html: str) -> None:
    page = ParsedPage(dataset_html)
    assert page.tags["script"] == 0
    assert EVIL not in dataset_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dataset_html
    assert page.plain.count(EVIL) >= 2  # shown as text: in the top captions and under its thumbnail
    # Labels drawn inside the plots (languages, reason codes) are escaped by matplotlib's SVG writer.
    svg = charts.bars([EVIL, "en"], [2, 1], "samples")
    assert EVIL not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg


def test_null_sections_get_a_note_and_the_page_stays_valid() -> None:
    stats = make_stats(balance=False, scores=False, semantic=False)
    stats["samples"]["kept"][1]["thumb"] = "http://evil.example/pixel.gif"  # must never become a fetch
    stats["samples"]["kept"][2]["caption"] = None
    html = render_html(stats)
    page = ParsedPage(html)
    assert_self_contained(page)
    text = page.plain
    assert "Balance: not balanced: the build ran without a query list." in text
    assert "Scores: no CLIP scores" in text
    assert "Semantic (CLIP): not run for this dataset." in text
    assert "evil.example" not in html and "no image" in text and "(no caption)" in text
    assert not {"fig-balance", "fig-clip_score", "fig-dup-semantic"} & set(page.ids)
    assert page.tags["img"] == 47 + 2


def _emptied(value):
    """`value` with every histogram, list and count of a dataset stats dict emptied (a build that kept nothing)."""
    if isinstance(value, dict):
        if "edges" in value:
            return {**value, "counts": [0] * len(value["counts"]), "count": 0, "min": None, "max": None,
                    "mean": None, "quantiles": {}}  # fmt: skip
        return {k: v if k in ("format", "version", "seed", "t", "threshold") else _emptied(v) for k, v in value.items()}
    if isinstance(value, list):
        return []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return 0
    return value


def test_a_dataset_that_kept_nothing_still_renders() -> None:
    html = render_html(_emptied(make_stats()))
    page = ParsedPage(html)
    assert_self_contained(page)
    assert "no data" in html  # the empty plots say so
    assert "0 candidates" in page.plain and "Kept (0)" in page.plain and page.tags["img"] == 0


def test_compare_page_shows_both_and_the_differences(compare_html: str) -> None:
    page = ParsedPage(compare_html)
    assert_self_contained(page)
    text = page.plain
    assert "A = /data/wit-a · B = /data/wit-b" in text
    assert "caption_words.p50 9 10 +1 +11.1%" in text
    assert "rejected.text.boilerplate 1,200 1,201 +1 +0.083%" in text
    assert "lang_share.en 80.0% 79.9% −0.1 pp −0.13%" in text
    assert "clip_score.p50 0.31 — — —" in text  # only A has scores
    assert "bytes 123.5 MB 124.5 MB +1.0 MB +0.81%" in text
    assert "text · boilerplate 1,200 1,200 ±0 9.7% 9.7%" in text
    for name in ("cmp-funnel", "cmp-captions-words", "cmp-images-original_width", "cmp-scores-clip_score"):
        assert f"fig-{name}" in page.ids
    assert "fig-cmp-balance" in page.ids  # A's curves alone
    assert page.tags["img"] == 24  # 12 kept samples of each side


def test_run_page_from_a_metrics_file(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run", steps=20, eval_every=5, torn=True)
    html = render_html(run_stats(tmp_path / "run"))
    page = ParsedPage(html)
    assert_self_contained(page)
    text = page.plain
    assert "20 steps" in text and "320 samples seen" in text and "2 final loss" in text
    assert "20.0% zero-shot top-1" in text and "50.0% zero-shot top-5" in text
    assert "20 20.0% 50.0%" in text  # the last eval row
    assert "config.model" in text and "tiny" in text
    assert {f"fig-run-{k}" for k in ("loss", "lr", "temperature", "samples_per_s", "zeroshot")} <= set(page.ids)


def test_the_page_is_reproducible(dataset_html: str) -> None:
    assert render_html(make_stats()) == dataset_html  # same stats, same bytes: no dates, SVG ids fixed


def test_a_long_run_stays_a_small_page(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run", steps=10_000, eval_every=1000, noisy=True)
    html = render_html(run_stats(tmp_path / "run"))
    assert "10,000 steps" in ParsedPage(html).plain
    assert len(html) < 400_000  # matplotlib simplifies a 10k-point line to what the plot's pixels can show


def test_render_report_writes_one_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_metrics(tmp_path / "run")
    path = render_report(run_stats(tmp_path / "run"), out)
    first = path.read_bytes()
    assert path == out / "index.html" and [p.name for p in out.iterdir()] == ["index.html"]
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="not a stats dict: format 'nope'"):
        render_report({"format": "nope"}, out)
    assert [p.name for p in out.iterdir()] == ["index.html"] and path.read_bytes() == first


# ---- in a real browser ---------------------------------------------------------------------------------------------

DRAWN = """JSON.stringify([...document.querySelectorAll('svg, img')].map(e => {
  const r = e.getBoundingClientRect();
  return {tag: e.tagName.toLowerCase(), x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height,
          loaded: e.tagName.toLowerCase() !== 'img' || (e.complete && e.naturalWidth > 0)};
}))"""


def _colours(shot: Image.Image, box: dict) -> int:
    x, y = int(box["x"]), int(box["y"])
    area = shot.crop((x, y, x + int(box["w"]), y + int(box["h"])))
    return len(area.getcolors(maxcolors=1 << 16) or range(1 << 16))


@pytest.mark.timeout(900)  # room for the fixture's first-time `apt-get install chromium`
def test_pages_open_in_chromium_without_errors_or_requests_and_plots_draw(
    browser, dataset_html: str, compare_html: str, tmp_path: Path
) -> None:
    import json

    write_metrics(tmp_path / "run-folder")
    pages = {"dataset": dataset_html, "compare": compare_html, "run": render_html(run_stats(tmp_path / "run-folder"))}
    for name, html in pages.items():
        index = tmp_path / name / "index.html"
        index.parent.mkdir()
        index.write_text(html, encoding="utf-8")
        browser.load(index.as_uri())
        assert browser.errors() == [], name
        assert [u for u in browser.requests() if u != index.as_uri() and not u.startswith("data:")] == [], name
        assert browser.evaluate("document.querySelectorAll('script').length") == 0
        drawn = json.loads(browser.evaluate(DRAWN))
        assert drawn and all(d["w"] > 50 and d["h"] > 30 and d["loaded"] for d in drawn), (name, drawn[:3])
        shot_path = tmp_path / f"{name}.png"
        width, height = browser.screenshot(shot_path)
        shutil.copyfile(shot_path, SCREENSHOTS[name])
        shot = Image.open(shot_path).convert("RGB")
        assert shot.size == (width, height)
        plots = [d for d in drawn if d["tag"] == "svg"]
        # Every plot area holds a real drawing: bars, lines, text and their anti-aliasing give many colours,
        # where a plot that failed to draw would be a blank box of one or two.
        assert min(_colours(shot, d) for d in plots) >= 20, name
        assert len(shot.getcolors(maxcolors=1 << 20) or ()) > 200

    # The checks above can fail: a page with a fetch and a script (both blocked by our policy) is caught.
    bad = tmp_path / "bad.html"
    head = dataset_html[: dataset_html.index("<title>")]  # the same doctype, charset and Content-Security-Policy
    bad.write_text(head + '<title>bad</title></head><body><img src="http://example.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')  # fmt: skip
    browser.load(bad.as_uri())
    assert "http://example.invalid/x.png" in browser.requests()
    assert len(browser.errors()) == 2  # the image and the inline script, refused
