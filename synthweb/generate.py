"""Generating a synthetic web on disk: pages, pictures and faults, with the ground truth and the eval set."""

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synthweb import faults as flt
from synthweb.builder import WebBuilder
from synthweb.evalset import write_eval_sets
from synthweb.pictures import add_leak, add_picture
from synthweb.plant import plant_faults
from synthweb.site import Page, page_html, plan_pages
from synthweb.spec import WebConfig, vocabulary
from synthweb.truth import CLASSES_FILE, SITE_FILE, TRUTH_FILE, TRUTH_SCHEMA, write_table

_HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class WebSummary:
    web_dir: str
    seed: int
    hosts: int
    pages: int
    images: int  # image URLs with a truth row (faults, redirect targets and srcset candidates included)
    referenced_images: int  # image URLs the pages reference: the rows of urls.parquet once served
    eval_images: int
    faults: dict[str, int] = field(default_factory=dict)
    caption_kinds: dict[str, int] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / SITE_FILE).is_file():
            raise ValueError(f"{out} is not empty and holds no synthetic web; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _pages_and_robots(b: WebBuilder, pages: list[Page]) -> list[dict]:
    """Render every page now that all its pictures are placed, and each host's robots.txt; the pages' truth rows."""
    locs = {r["id"]: (r["host"], r["path"]) for r in b.rows.values()} | {p.id: (p.host, p.path) for p in pages}
    page_rows = []
    for page in pages:
        values = {"id": page.id, "title": page.title, "lang": page.lang, "links": page.links, "seed": page.seed}
        values["fault"] = page.fault
        if page.fault == "http_404":
            values.update(status=404, content_type=None)
        else:
            html = page_html(page, locs, b.rng).encode()
            b.route(page.host, page.path, body=html, ctype=_HTML, template=True)
            values["content_type"] = _HTML
        page_rows.append(b.row(page.host, page.path, kind="page", **values))
    for host in range(b.cfg.hosts):
        body = flt.robots_txt(host).encode()
        b.route(host, "/robots.txt", body=body, ctype="text/plain; charset=utf-8")
        digest = hashlib.sha256(body).hexdigest()
        values = {"id": f"robots-{host}", "content_type": "text/plain", "bytes": len(body), "sha256": digest}
        b.row(host, "/robots.txt", kind="robots", **values)
    return page_rows


def generate_web(out_dir: str | Path, cfg: WebConfig | None = None) -> WebSummary:
    """Write a synthetic web to `out_dir` (replacing an earlier one there): host files with port placeholders,
    site.json (routes for the server), truth.parquet, classes.json, eval/ and eval_shift/. Deterministic from cfg."""
    cfg = cfg or WebConfig()
    out = Path(out_dir)
    _prepare(out)
    vocab = vocabulary(cfg.seed)
    eval_rows = write_eval_sets(out, cfg, vocab)
    b = WebBuilder(out, cfg, vocab)
    pages = plan_pages(cfg.pages, cfg.hosts, b.rng)
    regular = [p for p in pages if p.fault == "none"]
    for page in regular:
        for _ in range(max(1, cfg.images_per_page + b.rng.randint(-2, 2))):
            add_picture(b, page)
    leaks = [r for r in eval_rows if r["shift"] is None and r["split"] == "train"]
    for eval_row in b.rng.sample(leaks, min(len(leaks), max(2, cfg.pages // 6))):
        add_leak(b, b.rng.choice(regular), eval_row)
    plant_faults(b, pages)

    page_rows = _pages_and_robots(b, pages)
    rows = page_rows + [r for r in b.rows.values() if r["kind"] != "page"]
    write_table(rows, TRUTH_SCHEMA, out / TRUTH_FILE)
    site = {
        "config": cfg.to_dict(),
        "hosts": cfg.hosts,
        "seeds": [[p.host, p.path] for p in pages if p.seed],
        "routes": b.routes,
    }
    (out / SITE_FILE).write_text(json.dumps(site, indent=1, sort_keys=True) + "\n")
    (out / CLASSES_FILE).write_text(json.dumps(vocab.to_dict(), indent=1) + "\n")
    images = [r for r in rows if r["kind"] == "image"]
    return WebSummary(
        web_dir=str(out),
        seed=cfg.seed,
        hosts=cfg.hosts,
        pages=len(pages),
        images=len(images),
        referenced_images=sum(1 for r in images if r["page"]),
        eval_images=len(eval_rows),
        faults=dict(sorted(Counter(r["fault"] for r in rows if r["fault"] != "none").items())),
        caption_kinds=dict(sorted(Counter(r["caption_kind"] for r in images if r["caption_kind"]).items())),
        held_out=list(vocab.held_out),
    )
