"""Fetch outcomes per host: what `wit fetch` prints at the end, so a blocked or failing site stands out."""

import os
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline import fsio
from pipeline.shard_reader import load_manifest
from schemas import fields, reasons


@dataclass
class HostOutcomes:
    host: str
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.reasons.values())

    @property
    def total(self) -> int:
        return self.kept + self.failed


def host_of(url: str | None) -> str:
    """host[:port] in lower case ("?" when the URL has none): ports count, as politeness limits count them."""
    try:
        netloc = urlsplit(url or "").netloc.rpartition("@")[2].lower()
    except ValueError:
        netloc = ""
    return netloc or "?"


def host_summary(
    dataset_dir: str | os.PathLike, stages: tuple[str, ...] = (reasons.FETCH, reasons.IMAGE)
) -> list[HostOutcomes]:
    """Kept samples and the rejections of `stages` (by default what fetching met) per host of a finished dataset,
    most candidates first. Reads three columns only."""
    manifest = load_manifest(dataset_dir)
    hosts: dict[str, HostOutcomes] = {}

    def get(url: str | None) -> HostOutcomes:
        host = host_of(url)
        return hosts.setdefault(host, HostOutcomes(host))

    for shard in manifest.shards:
        for url in fsio.read_parquet(fsio.join(dataset_dir, shard.parquet.path), [fields.URL]).column(0).to_pylist():
            get(url).kept += 1
    for part in manifest.rejected:
        table = fsio.read_parquet(fsio.join(dataset_dir, part.path), [fields.URL, fields.STAGE, fields.REASON])
        for url, stage, reason in zip(*(c.to_pylist() for c in table.columns), strict=True):
            if stage in stages:
                get(url).reasons[reason] += 1
    return sorted(hosts.values(), key=lambda h: (-h.total, h.host))


def format_host_summary(outcomes: list[HostOutcomes], top: int = 15) -> str:
    """A plain-text table: the `top` busiest hosts with success rate and their commonest failure reasons."""
    if not outcomes:
        return "no candidates"
    lines = [f"{'host':<40} {'kept':>8} {'failed':>8} {'ok %':>6}  top failures"]
    for h in outcomes[:top]:
        worst = ", ".join(f"{reason} {n}" for reason, n in h.reasons.most_common(3))
        lines.append(f"{h.host[:40]:<40} {h.kept:>8} {h.failed:>8} {100 * h.kept / h.total:>6.1f}  {worst}")
    if len(outcomes) > top:
        rest = outcomes[top:]
        kept, failed = sum(h.kept for h in rest), sum(h.failed for h in rest)
        lines.append(f"{f'({len(rest)} more hosts)':<40} {kept:>8} {failed:>8} {100 * kept / (kept + failed):>6.1f}")
    kept, total = sum(h.kept for h in outcomes), sum(h.total for h in outcomes)
    lines.append(f"{'all ' + str(len(outcomes)) + ' hosts':<40} {kept:>8} {total - kept:>8} {100 * kept / total:>6.1f}")
    return "\n".join(lines)
