"""Hand-made, contract-complete stats dicts (/work/notes/stats_json.md) with known numbers, for the renderer's tests."""

import base64
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

EVIL = "<script>alert(1)</script>"

# The funnel: stage -> [(reason, count)], in data-flow order. 12,345 candidates, 6,789 kept.
REJECTED = {
    "text": [("boilerplate", 1200), ("too_few_words", 800)],
    "dedup": [("duplicate_url", 1500), ("near_duplicate_image", 300)],
    "balance": [("no_query_match", 500), ("over_query_cap", 256)],
    "fetch": [("timeout", 700), ("not_an_image", 100)],
    "image": [("too_small", 200)],
}
KEPT = 6789
CANDIDATES = KEPT + sum(n for reasons in REJECTED.values() for _, n in reasons)  # 12,345


def thumb(rgb: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> str:
    """A small JPEG of a colour gradient as a data URI (what the stats job embeds)."""
    image = Image.new("RGB", size)
    w, h = size
    image.putdata([(rgb[0], (rgb[1] + 4 * x) % 256, (rgb[2] + 6 * y) % 256) for y in range(h) for x in range(w)])
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def hist(edges: list[float], counts: list[int], *, log: bool = False) -> dict[str, Any]:
    """A contract Hist whose summary numbers follow from the counts (values taken at bin midpoints)."""
    mids = [(a * b) ** 0.5 if log else (a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    total = sum(counts)
    values = [m for m, c in zip(mids, counts, strict=True) for _ in range(c)]

    def q(p: float) -> float:
        return values[min(int(p * total), total - 1)]

    quantiles = {f"p{p}": q(p / 100) for p in (1, 5, 25, 50, 75, 95, 99)} if total else {}
    return {
        "edges": edges,
        "counts": counts,
        "log": log,
        "count": total,
        "min": values[0] if total else None,
        "max": values[-1] if total else None,
        "mean": sum(values) / total if total else None,
        "quantiles": quantiles,
    }


def _log_edges(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / n) for i in range(n + 1)]


def _bell(n: int, peak: int, total: int) -> list[int]:
    weights = [2.0 ** (-((i - peak) ** 2) / 8) for i in range(n)]
    s = sum(weights)
    return [round(total * w / s) for w in weights]


def make_stats(
    path: str = "/data/wit-a", *, balance: bool = True, scores: bool = True, semantic: bool = True, shift: int = 0
) -> dict[str, Any]:
    """A dataset stats dict with the numbers above; `shift` moves the distributions (for compare mode)."""
    stages = []
    for stage, reasons in REJECTED.items():
        rows = [
            {"reason": r, "count": n, "share": n / CANDIDATES, "description": f"why {r} & <how>"} for r, n in reasons
        ]
        stages.append({"stage": stage, "rejected": sum(n for _, n in reasons), "reasons": rows})
    kept = [
        {
            "key": f"k{i:05d}",
            "caption": EVIL if i == 0 else f"a photo of thing number {i} on a table",
            "thumb": thumb((30 * i % 256, 80, 160)),
            "width": 256,
            "height": 192,
        }
        for i in range(48)
    ]
    flat_reasons = [(s, r) for s, rs in REJECTED.items() for r, _ in rs]
    rejected = [
        {
            "key": f"r{i:05d}",
            "caption": f"rejected caption {i}" if i % 5 else None,
            "url": f"http://host{i % 4}.example/img/{i}.jpg",
            "stage": flat_reasons[i % len(flat_reasons)][0],
            "reason": flat_reasons[i % len(flat_reasons)][1],
        }
        for i in range(24)
    ]
    domains = [
        {"domain": f"host{i}.example", "kept": 900 - 25 * i, "rejected": 300 - 7 * i, "fetch_failures": 30 - i}
        for i in range(30)
    ]
    outcomes = [
        {"host": f"host{i}.example", "kept": 900 - 25 * i, "reasons": {"timeout": 20 + i, "not_an_image": i % 3}}
        for i in range(30)
    ]
    word_edges = list(range(0, 41, 2))
    return {
        "format": "wit-builder-stats",
        "version": 1,
        "dataset": {
            "path": path,
            "schema_version": "3",
            "code_version": "0.1.0+abc1234",
            "rows": KEPT,
            "shards": 7,
            "bytes": 123_456_789,
            "config": {"text": {"min_words": 2, "languages": ["en", "de"]}, "fetch": {"timeout_s": 10}},
        },
        "summary": {
            "rows": KEPT,
            "bytes": 123_456_789 + shift * 1_000_000,
            "candidates": CANDIDATES,
            "kept_share": KEPT / CANDIDATES,
            "rejected.text.boilerplate": 1200 + shift,
            "lang_share.en": 0.8 - shift / 1000,
            "caption_words.p50": 9 + shift,
            "gini_domains": 0.789,
            **({"clip_score.p50": 0.31} if scores else {}),
        },
        "funnel": {"candidates": CANDIDATES, "kept": KEPT, "stages": stages},
        "captions": {
            "words": hist(word_edges, _bell(20, 4 + shift, KEPT)),
            "chars": hist(list(range(0, 201, 10)), _bell(20, 5 + shift, KEPT)),
            "languages": [
                {"value": "en", "count": 5431, "share": 0.8},
                {"value": "de", "count": 679, "share": 0.1},
                {"value": "fr", "count": 679, "share": 0.1},
            ],
            "top_captions": [{"value": EVIL, "count": 77, "share": 77 / KEPT}]
            + [{"value": f"common caption {i}", "count": 50 - i, "share": (50 - i) / KEPT} for i in range(24)],
            "top_tokens": [{"value": f"tok{i}", "count": 5000 - 90 * i, "share": 0.05} for i in range(50)],
            "boilerplate_share": 1200 / CANDIDATES,
        },
        "images": {
            "original_width": hist(_log_edges(16, 8192, 20), _bell(20, 11 + shift, KEPT), log=True),
            "original_height": hist(_log_edges(16, 8192, 20), _bell(20, 10 + shift, KEPT), log=True),
            "aspect": hist(_log_edges(0.25, 4, 16), _bell(16, 9, KEPT), log=True),
            "width": hist(list(range(0, 513, 32)), _bell(16, 8, KEPT)),
            "height": hist(list(range(0, 513, 32)), _bell(16, 6, KEPT)),
            "bytes": hist(_log_edges(1000, 10_000_000, 20), _bell(20, 8 + shift, KEPT), log=True),
            "formats": [
                {"value": "jpg", "count": 6000, "share": 6000 / KEPT},
                {"value": "png", "count": 789, "share": 789 / KEPT},
            ],
        },
        "sources": {
            "domains": 321,
            "top": domains,
            "top1pct_share": 0.123,
            "top10pct_share": 0.456,
            "gini": 0.789,
            "fetch_outcomes": outcomes,
        },
        "balance": {
            "t": 1000,
            "entries": 500_000,
            "matched_entries_before": 43_210,
            "matched_entries_after": 40_000,
            "curve_before": [[r, int(50_000 / r**0.9)] for r in (1, 2, 5, 10, 20, 50, 100, 1000, 10_000)],
            "curve_after": [[r, min(1000, int(50_000 / r**0.9))] for r in (1, 2, 5, 10, 20, 50, 100, 1000, 10_000)],
            "head": [{"entry": f"head entry {i}", "before": 50_000 - i, "after": 1000} for i in range(25)],
            "tail": [{"entry": f"tail entry {i}", "before": 1, "after": 1} for i in range(25)],
            "no_match_share": 0.0625,
        }
        if balance
        else None,
        "duplicates": {
            "exact": {"groups": 1500, "removed": 1500, "sizes": hist([2, 3, 4, 5, 6, 8, 16], [1400, 80, 10, 5, 4, 1])},
            "near": {"groups": 250, "removed": 300, "sizes": hist([2, 3, 4, 5, 6, 8, 16], [220, 20, 5, 3, 2, 0])},
            "semantic": {"groups": 40, "removed": 44, "sizes": hist([2, 3, 4, 8], [37, 2, 1])} if semantic else None,
            "eval_contamination": 3,
            "examples": [
                {
                    "kind": kind,
                    "survivor": {
                        "key": f"{kind}-survivor",
                        "caption": f"the {kind} survivor",
                        "thumb": thumb((200, 40, 40)),
                    },
                    "members": [
                        {"key": f"{kind}-m{j}", "url": f"http://dup.example/{kind}/{j}.jpg", "caption": f"member {j}"}
                        for j in range(3)
                    ],
                }
                for kind in ("exact", "near")
            ],
        },
        "scores": {
            "clip_score": hist([round(0.02 * i, 2) for i in range(26)], _bell(25, 14, KEPT)),
            "threshold": 0.28,
            "top_fraction": None,
        }
        if scores
        else None,
        "samples": {"seed": 1234, "kept": kept, "rejected": rejected},
    }


def make_compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The compare dict of two stats dicts, its diff computed as the contract says."""
    names = sorted(set(a["summary"]) | set(b["summary"]))
    diff = []
    for name in names:
        va, vb = a["summary"].get(name), b["summary"].get(name)
        delta = vb - va if va is not None and vb is not None else None
        diff.append({"metric": name, "a": va, "b": vb, "delta": delta})
    return {"format": "wit-builder-stats-compare", "version": 1, "a": a, "b": b, "diff": diff}


def write_metrics(run: Path, steps: int = 20, eval_every: int = 5, torn: bool = False, noisy: bool = False) -> Path:
    """A metrics.jsonl (and config.json) as clipmodel.train.log writes them: loss falls from 4.0 by 0.1 a step
    (`noisy`: plus a jagged term in [0, 0.5), like a real loss, which no plotting can simplify away)."""
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, steps + 1):
        lines.append(
            {
                "kind": "train",
                "step": step,
                "samples": 16 * step,
                "loss": round(4.0 - 0.1 * step + (0.5 * (step * 7919 % 13) / 13 if noisy else 0.0), 4),
                "lr": 1e-3 * min(1.0, step / 4),
                "logit_scale": 14.29,
                "temperature": 0.07,
                "samples_per_s": None if step == 1 else 100.0 + step,
                "grad_norm": 1.5,
                "epoch": 0,
                "data_samples": 16 * step,
            }
        )
        if step % eval_every == 0:
            lines.append({"kind": "eval", "step": step, "samples": 16 * step, "top1": step / 100, "top5": step / 40})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if torn:
        text += '{"kind": "train", "step": 99, "sam'
    (run / "metrics.jsonl").write_text(text)
    (run / "config.json").write_text(json.dumps({"config": {"model": "tiny", "steps": steps}, "world_size": 1}))
    return run / "metrics.jsonl"
