"""The curation ablation's datasets graded against the synthetic web's ground truth: what each arm's pairs are
(caption names the pictured class, another class, none; duplicates; eval leaks) and what each stage removed."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas import fields
from synthweb.captions import mentioned_classes
from synthweb.truth import picture_of, same_text


def _mismatched(t: dict | None, caption: str | None) -> bool:
    """The candidate's caption is its picture's alt text, written about another class."""
    return t is not None and t["caption_kind"] == "mismatch" and same_text(caption, t["caption"])


def _rows(files) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


def _samples(dataset: Path) -> list[dict]:
    files = sorted((dataset / "shards").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f, columns=[fields.URL, fields.CAPTION]).to_pylist()]


def funnel(dataset: Path) -> dict[str, Any]:
    """Counts per stage and reason from the dataset's manifest, and what it holds."""
    counts = json.loads((dataset / "manifest.json").read_text())["counts"]
    dropped = {st: {r: n for r, n in by.items() if r != "kept" and n} for st, by in counts.items()}
    dropped = {st: by for st, by in dropped.items() if by}
    return {"samples": len(_samples(dataset)), "dropped": dropped, "dropped_total": sum(
        n for by in dropped.values() for n in by.values())}  # fmt: skip


def graded(dataset: Path, truth_path: Path) -> dict[str, Any]:
    """What the dataset's pairs are, by the web's truth: does the caption name the pictured class (in English or
    not), another class, or none; how many show a picture another sample also shows; how many copy an eval image."""
    truth = pq.read_table(truth_path).to_pylist()
    by_url, by_id = {r["url"]: r for r in truth}, {r["id"]: r for r in truth}
    names, kinds, groups, leaks, unknown = Counter(), Counter(), Counter(), 0, 0
    pictures = []
    for s in _samples(dataset):
        t = picture_of(s[fields.URL], by_url, by_id)
        if t is None or not t["label"]:
            unknown += 1
            continue
        said = mentioned_classes(s[fields.CAPTION] or "")
        names["its class" if said == {t["label"]} else "another class" if said else "no class"] += 1
        same_as_alt = same_text(s[fields.CAPTION], t["caption"])
        kinds[t["caption_kind"] if same_as_alt and t["caption_kind"] else "other text (figcaption, title, ...)"] += 1
        picture = t["dup_group"] or t["near_dup_group"] or t["id"]
        pictures.append(picture)
        groups[picture] += 1
        leaks += bool(t["eval_leak"])
    n = sum(names.values())
    return {
        "graded": n,
        "no_truth": unknown,
        "caption_names": dict(names.most_common()),
        "caption_names_its_class_share": names["its class"] / n if n else None,
        "caption_kind": dict(kinds.most_common()),
        "distinct_pictures": len(groups),
        "samples_repeating_a_picture": n - len(groups),
        "eval_leaks": leaks,
    }


def rejections_graded(dataset: Path, truth_path: Path) -> dict[str, dict[str, int]]:
    """What each curation stage threw away, by the truth's kind of the alt text (does a stage lose good pairs?)."""
    truth = {r["url"]: r for r in pq.read_table(truth_path).to_pylist()}
    out: dict[str, Counter] = {}
    for f in sorted((dataset / "rejected").glob("*.parquet")):
        for r in pq.read_table(f, columns=[fields.URL, fields.CAPTION, "stage", "reason"]).to_pylist():
            if r["stage"] in ("fetch", "image"):
                continue
            t = truth.get(r[fields.URL])
            alt = t is not None and t["caption_kind"] and same_text(r[fields.CAPTION], t["caption"])
            out.setdefault(f"{r['stage']}: {r['reason']}", Counter())[t["caption_kind"] if alt else "other text"] += 1
    return {k: dict(v.most_common()) for k, v in sorted(out.items())}


# ---- training and evaluation ----------------------------------------------------------------------------------------
