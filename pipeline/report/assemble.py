"""The dataset's stats.json from the manifest and the Beam stage's combined parts (the contract in one function)."""

from typing import Any

from pipeline.report import stats
from schemas import DatasetManifest, fields, reasons

_IMAGE_HISTS = (fields.ORIGINAL_WIDTH, fields.ORIGINAL_HEIGHT, "aspect", fields.WIDTH, fields.HEIGHT, fields.BYTES)


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _duplicates(parts: dict, counts: dict, config: dict) -> dict:
    hists = parts["dup_hists"]
    image_dedup = _section(config, "image_dedup")
    applies = {
        "exact": bool(image_dedup.get("exact")),
        "near": bool(image_dedup.get("near")),
        "semantic": bool(config.get("semdedup")),
    }
    out: dict[str, Any] = {
        kind: stats.duplicate_section(hists[kind]) if applies[kind] or hists[kind]["count"] else None
        for kind in applies
    }
    out["eval_contamination"] = stats.reason_total(counts, *stats.EVAL_REASONS)
    survivors = {key: (caption, shard) for key, caption, shard in parts["survivors"]}
    members = dict(parts["dup_members"])
    largest = parts["dup_groups"]
    examples = []
    for kind in applies:
        for _, survivor in sorted(largest.get(kind, [])):
            examples.append(
                {
                    "kind": kind,
                    "survivor": {
                        "key": survivor,
                        "caption": survivors.get(survivor, (None, None))[0],
                        "thumb": parts["thumbs"].get(survivor),
                    },
                    "members": [{"key": k, "url": u, "caption": c} for k, u, c in members.get((kind, survivor), [])],
                }
            )
    out["examples"] = examples
    return out


def _sources(parts: dict) -> dict:
    coc = parts["kept_count_of_counts"]
    return {
        "domains": parts["domains"],
        "top": [
            {"domain": d, "kept": k, "rejected": r, "fetch_failures": sum(o.values())}
            for d, (k, r, o) in parts["top_domains"]
        ],
        "top1pct_share": stats.top_share(coc, 0.01),
        "top10pct_share": stats.top_share(coc, 0.10),
        "gini": stats.gini(coc),
        "fetch_outcomes": [
            {"host": d, "kept": k, "reasons": dict(sorted(o.items()))} for d, (k, _, o) in parts["fetch_outcomes"]
        ],
    }


def _samples(parts: dict, seed: int) -> dict:
    thumbs = parts["thumbs"]
    kept = [
        {"key": key, "caption": caption, "thumb": thumbs.get(key), "width": w, "height": h}
        for _, key, _, caption, w, h in parts["kept_samples"]
    ]
    return {"seed": seed, "kept": kept, "rejected": [row for _, _, row in parts["rejected_samples"]]}


def assemble(parts: dict[str, Any], root: str, manifest: DatasetManifest, seed: int) -> dict:
    """stats.json of one dataset, as the report contract of issue 8 lays it out."""
    counts, config, rows = manifest.counts, manifest.config or {}, manifest.rows
    funnel = stats.funnel(counts, rows)
    hists = parts["sample_hists"]
    clip = _section(config, "clip_score")
    scores = None
    if config.get("job") == "filter" or hists[fields.CLIP_SCORE]["count"]:
        scores = {
            "clip_score": hists[fields.CLIP_SCORE],
            "threshold": clip.get("min_score"),
            "top_fraction": clip.get("top_fraction"),
        }
    balance = None
    if "balance_entries" in parts:
        no_match = stats.reason_total(counts, reasons.NO_QUERY_MATCH)
        t = _section(config, "balance").get("t")
        balance = stats.balance_section(parts["balance_entries"], t, no_match, stats.reaching_balance(counts, rows))
    candidates = funnel["candidates"]
    out = {
        "format": stats.FORMAT,
        "version": stats.VERSION,
        "dataset": {
            "path": root,
            "schema_version": manifest.schema_version,
            "code_version": manifest.code_version or None,
            "rows": rows,
            "shards": len(manifest.shards),
            "bytes": sum(s.tar.bytes + s.parquet.bytes for s in manifest.shards),
            "config": manifest.config or None,
        },
        "summary": {},
        "funnel": funnel,
        "captions": {
            "words": hists["caption_words"],
            "chars": hists["caption_chars"],
            "languages": stats.top_list(parts["languages"].items(), rows),
            "top_captions": stats.top_list(parts["top_captions"], rows),
            "top_tokens": stats.top_list(parts["top_tokens"], hists["caption_tokens"]["sum"]),
            "boilerplate_share": stats.reason_total(counts, reasons.BOILERPLATE) / candidates if candidates else 0.0,
        },
        "images": {
            **{name: hists[name] for name in _IMAGE_HISTS},
            "formats": stats.top_list(parts["formats"].items(), rows),
        },
        "sources": _sources(parts),
        "balance": balance,
        "duplicates": _duplicates(parts, counts, config),
        "scores": scores,
        "samples": _samples(parts, seed),
    }
    out["summary"] = stats.summary(out)
    return out
