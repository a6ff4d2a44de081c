"""Image dedup after fetch: reference sets first, then exact (sha256) and near (phash) duplicates, on rows only.

Each sample gets exactly one outcome, by precedence (image_refs.PRECEDENCE): blocklisted > eval_contamination >
seen_before > duplicate_image > near_duplicate_image > kept.

1. Reference sets: a sample whose sha256 equals a reference's, or whose phash is within k bits of one, is removed
   with the set's reason before any deduplication, so it can neither survive a group nor link two others.
   References are joined on sha256 and on phash bands (a CoGroupByKey, or spill files), never broadcast as a side
   input.
2. Exact duplicates: per sha256 the smallest key survives; the others are rejected with its key as detail.
3. Near duplicates: the exact survivors' phashes are banded (pipeline.curate.lsh) into verified pairs within k bits
   that no signal vetoes (see Signals), and the pairs plus the exact (survivor, duplicate) links form a graph whose
   connected components (pipeline.curate.components) are the groups. Grouping is transitive: A~B and B~C group A
   with C even when A and C are more than k bits apart (or would be vetoed). The smallest key of a group survives
   with dup_group set to its own key; the others are rejected as near duplicates of it (exact duplicates keep
   duplicate_image, detail their byte-identical survivor). The `groups` output lists (group, member key) for every
   group of two or more.

Signals: "within k bits" is the candidate rule, but a 64-bit grey hash of a plain shape on a plain background also
matches other pictures laid out alike. A candidate pair (sample-sample or sample-reference) is vetoed when the
original aspect ratios differ by more than a crop could make them (max_aspect_change) or a quadrant's mean colour
differs by more than re-encoding and cropping move it (max_colour_change, on the colour_sig field). A signal missing
on either side (a blocklisted phash, a row from an older dataset) never vetoes.

Only rows travel (key, sha256, phash and signals in the shuffles, the full row in the final join by key): the caller
joins the image bytes back to the `kept` rows by key. Given a work folder, every grouping goes through spill files
partitioned by the expected row count (pipeline.spill.Grouping) instead of a shuffle, so that the in-process runner
holds one partition at a time: `wit build` judges every fetched sample that way in flat memory.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np

from pipeline.counters import Counters
from pipeline.curate.components import ConnectedComponents, UnionFind
from pipeline.curate.image_refs import PRECEDENCE, ReferenceSet, RefHash
from pipeline.curate.lsh import (
    NearMatches,
    NearPairs,
    as_hashes,
    as_signals,
    band_masks,
    cross_pairs,
    distinct_nodes,
    self_pairs,
)
from pipeline.fetch.image import colour_distance
from pipeline.rejection import rejection_row
from pipeline.spill import Grouping
from schemas import fields, reasons
from schemas.reasons import REJECTED

GROUPS = "groups"
_PRIVATE_KEEP = (fields.KEY, fields.STAGE, fields.REASON, fields.DETAIL)

# (key, sha256, phash, signals): all the shuffles carry. Spelled as a bare tuple on purpose: a typed int field would
# make Beam pick VarIntCoder (signed 64-bit), which cannot hold a uint64 phash.
Slim = tuple
Hit = tuple[int, str]  # (rank in PRECEDENCE, detail): min() picks the outcome that wins
# (original width, original height, colour_sig), 0, 0 and -1 standing for unknown: int64 columns lsh can carry.
Signals = tuple[int, int, int]
# A full row weighs about ten slims in memory: the final join's spilled partitions are that much finer.
ROW_SCALE = 10


@dataclass(frozen=True)
class ImageDedupConfig:
    k: int = 4  # phash bits two near duplicates may differ in
    exact: bool = True
    near: bool = True
    rounds: int = 10  # large-star/small-star rounds: enough for a chain of ~1000 images in the worst key order
    bucket_bits: int = 8  # 2**bucket_bits shuffle groups per band; raise with the corpus so a group fits a worker
    fallback_cap: int = 1_000_000  # edges one worker may finish if the rounds did not converge; beyond, fail
    partitions: int = 16  # shuffle groups of the component rounds; raise so edges / partitions fit a worker
    # The vetoes (None turns one off), chosen from benchmarks/near_dup_quality.py's "signals":
    # |ln| of the ratio of two original aspect ratios beyond which a candidate pair is not one picture: cropping up
    # to 6% a side stays within 0.13 (ln 1/0.88); the synthetic web's copies reach 0.11.
    max_aspect_change: float | None = 0.13
    # colour_sig steps any quadrant's Y, Cb or Cr may differ by: copies move a field by 3 steps at most (12 of 4,000
    # measured reach 3); most different pictures whose hashes collide differ by 4 or more.
    max_colour_change: int | None = 3

    def __post_init__(self) -> None:
        if not 0 <= self.k <= 15:
            raise ValueError(f"k must be between 0 and 15 bits, got {self.k}")
        if self.max_aspect_change is not None and not self.max_aspect_change >= 0:
            raise ValueError(f"max_aspect_change must be None or at least 0, got {self.max_aspect_change}")
        if self.max_colour_change is not None and not 0 <= self.max_colour_change <= 31:
            raise ValueError(f"max_colour_change must be None or between 0 and 31, got {self.max_colour_change}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0 <= self.bucket_bits <= 24:
            raise ValueError(f"bucket_bits must be between 0 and 24, got {self.bucket_bits}")
        if self.fallback_cap < 0:
            raise ValueError(f"fallback_cap must not be negative, got {self.fallback_cap}")
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {self.partitions}")

    def veto(self) -> "SignalVeto":
        return SignalVeto(self.max_aspect_change, self.max_colour_change)


@dataclass(frozen=True)
class SignalVeto:
    """Vetoes candidate pairs whose signals (rows of Signals) say they are different pictures; picklable, so that the
    Beam verify step applies exactly what the union-find reference does."""

    max_aspect_change: float | None
    max_colour_change: int | None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        vetoed = np.zeros(len(a), bool)
        if self.max_aspect_change is not None:
            known = (a[:, 0] > 0) & (a[:, 1] > 0) & (b[:, 0] > 0) & (b[:, 1] > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.abs(np.log(a[:, 0] * b[:, 1] / (a[:, 1] * b[:, 0])))
            vetoed |= known & (change > self.max_aspect_change)
        if self.max_colour_change is not None:
            known = (a[:, 2] >= 0) & (b[:, 2] >= 0)
            vetoed |= known & (colour_distance(a[:, 2], b[:, 2]) > self.max_colour_change)
        return vetoed


def signals(width: int | None, height: int | None, colour: int | None) -> Signals:
    """A sample's or reference's Signals, unknown values (None) as the placeholders SignalVeto skips."""
    return width or 0, height or 0, -1 if colour is None else colour


def slim(row: dict) -> Slim:
    sig = signals(row.get(fields.ORIGINAL_WIDTH), row.get(fields.ORIGINAL_HEIGHT), row.get(fields.COLOUR_SIG))
    return row[fields.KEY], row.get(fields.SHA256), row.get(fields.PHASH), sig


def decide(row: dict, hit: Hit | None, duplicate_of: str | None, group: str | None) -> tuple[str, dict]:
    """The one outcome of a sample: ("kept", row with dup_group set if it survives a group) or (REJECTED, row)."""
    key = row[fields.KEY]
    if hit is not None:
        rank, detail = hit
        rejected = rejection_row(row, PRECEDENCE[rank], detail)
        if PRECEDENCE[rank] == reasons.BLOCKLISTED:  # such material is never written anywhere, not even its URL
            rejected = {name: v if name in _PRIVATE_KEEP else None for name, v in rejected.items()}
        return REJECTED, rejected
    if duplicate_of is not None:
        return REJECTED, rejection_row(row, reasons.DUPLICATE_IMAGE, duplicate_of)
    if group is not None and group != key:
        return REJECTED, rejection_row(row, reasons.NEAR_DUPLICATE_IMAGE, group)
    if group is not None:
        row = dict(row)
        row[fields.DUP_GROUP] = group
    return "kept", row


def split_exact(members: Iterable[Slim]) -> tuple[Slim, list[str]]:
    """(survivor, duplicate keys) of samples sharing a sha256: the smallest key survives."""
    first, *rest = sorted(members)
    return first, [m[0] for m in rest]


def ref_signals(h: RefHash) -> Signals:
    return signals(h.width, h.height, h.colour)


def _verified(pairs: tuple[np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray, veto: SignalVeto) -> Iterator:
    """The (i, j) of `pairs` that `veto` lets through, a and b being the signals of the i and j sides."""
    i, j = pairs
    keep = ~veto(a[i], b[j])
    return zip(i[keep].tolist(), j[keep].tolist(), strict=True)


def reference_hits_pure(
    slims: Sequence[Slim], cfg: ImageDedupConfig, references: Sequence[ReferenceSet]
) -> dict[str, Hit]:
    """{key: winning hit} for samples matching a reference set exactly (sha256) or within k bits (phash) with no
    signal vetoing the pair."""
    by_sha: dict[str, Hit] = {}
    by_node: dict[tuple[int, Signals], Hit] = {}
    for ref in references:
        for h in ref.hashes():
            hit = (ref.rank, h.detail)
            if h.sha256 is not None:
                by_sha[h.sha256] = min(hit, by_sha.get(h.sha256, hit))
            if h.phash is not None:
                node = (h.phash, ref_signals(h))
                by_node[node] = min(hit, by_node.get(node, hit))
    hits = {s[0]: by_sha[s[1]] for s in slims if s[1] in by_sha}
    hashed = [s for s in slims if s[2] is not None]
    if by_node and hashed:
        refs = sorted(by_node)
        ref_sigs = as_signals((n[1] for n in refs), len(refs))
        hashes, sigs = as_hashes(s[2] for s in hashed), as_signals((s[3] for s in hashed), len(hashed))
        first, inv = distinct_nodes(hashes, sigs)
        pairs = cross_pairs(hashes[first], as_hashes(n[0] for n in refs), cfg.k, band_masks(cfg.k))
        best: dict[int, Hit] = {}
        for i, j in _verified(pairs, sigs[first], ref_sigs, cfg.veto()):
            best[i] = min(by_node[refs[j]], best.get(i, by_node[refs[j]]))
        for s, u in zip(hashed, inv.tolist(), strict=True):
            if u in best:
                hits[s[0]] = min(best[u], hits.get(s[0], best[u]))
    return hits


def near_links_pure(slims: Sequence[Slim], cfg: ImageDedupConfig, uf: UnionFind) -> None:
    """Union samples with identical phashes and signals, and representatives within k bits that no signal vetoes."""
    hashed = sorted(s for s in slims if s[2] is not None)
    hashes, sigs = as_hashes(s[2] for s in hashed), as_signals((s[3] for s in hashed), len(hashed))
    first, inv = distinct_nodes(hashes, sigs)
    for s, u in zip(hashed, inv.tolist(), strict=True):
        if s[0] != hashed[first[u]][0]:
            uf.union(s[0], hashed[first[u]][0])
    reps = sigs[first]
    for i, j in _verified(self_pairs(hashes[first], cfg.k, band_masks(cfg.k)), reps, reps, cfg.veto()):
        uf.union(hashed[first[i]][0], hashed[first[j]][0])


class DedupResult(NamedTuple):
    kept: list[dict]
    rejected: list[dict]
    groups: list[tuple[str, str]]


def dedup_images_pure(
    rows: Iterable[dict], cfg: ImageDedupConfig = ImageDedupConfig(), references: Sequence[ReferenceSet] = ()
) -> DedupResult:
    """The whole stage in one process (union-find): the reference DedupImages is tested against."""
    rows = list(rows)
    slims = [slim(r) for r in rows]
    hits = reference_hits_pure(slims, cfg, references)
    rest = [s for s in slims if s[0] not in hits]
    uf, duplicate_of = UnionFind(), {}
    if cfg.exact:
        by_sha = defaultdict(list)
        for s in rest:
            by_sha[s[1]].append(s)
        survivors = by_sha.pop(None, [])
        for members in by_sha.values():
            first, dups = split_exact(members)
            survivors.append(first)
            for key in dups:
                duplicate_of[key] = first[0]
                uf.union(first[0], key)
        rest = survivors
    if cfg.near:
        near_links_pure(rest, cfg, uf)
    labels = uf.labels()
    result = DedupResult([], [], [])
    for row in rows:
        key = row[fields.KEY]
        tag, out = decide(row, hits.get(key), duplicate_of.get(key), labels.get(key))
        (result.kept if tag == "kept" else result.rejected).append(out)
        if key in labels:
            result.groups.append((labels[key], key))
    return result


def _read_unit(unit: tuple[int, str], references: Sequence[ReferenceSet]) -> Iterator[tuple[Hit, Any]]:
    ref = references[unit[0]]
    for h in ref.read(unit[1]):
        yield (ref.rank, h.detail), h


def _exact_hits(element: tuple) -> Iterator[tuple[str, Hit]]:
    _, groups = element
    if groups["keys"] and groups["refs"]:
        best = min(groups["refs"])
        for key in groups["keys"]:
            yield key, best


def _ref_node(read: tuple[Hit, RefHash]) -> Iterator[tuple[Any, Hit]]:  # an untyped key: see Slim
    """((phash, signals), hit) of a reference with a phash: references alike in both are matched once."""
    hit, h = read
    if h.phash is not None:
        yield (h.phash, ref_signals(h)), hit


def _unmatched(element: tuple) -> Iterator[Slim]:
    _, groups = element
    if not groups["hit"]:
        yield from groups["slim"]


class _SplitExact(beam.DoFn):
    """(sha256, samples) -> the survivor (main) and (key, survivor key) per duplicate (tagged "duplicates")."""

    def process(self, element: tuple) -> Iterator:
        first, dups = split_exact(element[1])
        yield first
        for key in dups:
            yield beam.pvalue.TaggedOutput("duplicates", (key, first[0]))


class _Decide(beam.DoFn):
    def setup(self) -> None:
        self.counters = Counters("image_dedup")

    def process(self, element: tuple) -> Iterator:
        key, g = element
        hit = min(g["hit"]) if g.get("hit") else None
        duplicate_of = g["duplicate"][0] if g.get("duplicate") else None
        group = g["group"][0] if g.get("group") else None
        for row in g["row"]:
            tag, out = decide(row, hit, duplicate_of, group)
            self.counters.inc("kept" if tag == "kept" else out[fields.REASON])
            if tag == "kept" and group is not None:
                self.counters.inc("groups")
            yield out if tag == "kept" else beam.pvalue.TaggedOutput(REJECTED, out)
            if group is not None:
                yield beam.pvalue.TaggedOutput(GROUPS, (group, key))


def _sha_group(s: Slim) -> tuple[str, Slim]:
    # Without a sha256 there is nothing to compare bytes by: such a sample is a group of its own (NUL never starts
    # a hex digest), which survives as it is. One grouping for both, not a Flatten of two branches after it.
    return (s[1] or "\0" + s[0]), s


def _by_key(s: Slim) -> tuple[str, Slim]:
    return s[0], s


class DedupImages(beam.PTransform):
    """Sample rows -> `kept` rows (dup_group set on group survivors), `rejected` (REJECTION_SCHEMA rows) and
    `groups` ((group key, member key) for every member of a group of two or more, survivor included)."""

    def __init__(
        self,
        cfg: ImageDedupConfig = ImageDedupConfig(),
        references: Sequence[ReferenceSet] = (),
        work: str | None = None,
        rows_hint: int | None = None,
    ):
        """With `work` (a folder only this stage writes to) every grouping goes through spill files there instead
        of a shuffle, partitioned by `rows_hint` (the rows expected): the in-process runner then holds one
        partition at a time, not every row, so memory stays flat as the dataset grows."""
        super().__init__()
        self.cfg = cfg
        self.references = tuple(references)
        self.grouping = Grouping(work, rows_hint)

    def _reference_hits(self, pipeline: beam.Pipeline, slims: beam.PCollection) -> beam.PCollection:
        units = [(i, unit) for i, ref in enumerate(self.references) for unit in ref.units()]
        refs = (
            pipeline
            | "RefUnits" >> beam.Create(units)
            | "SpreadRefs" >> beam.Reshuffle()
            | "ReadRefs" >> beam.FlatMap(_read_unit, self.references)
        )
        exact = {
            "keys": slims | "SampleSha" >> beam.FlatMap(lambda s: [(s[1], s[0])] if s[1] else []),
            "refs": refs | "RefSha" >> beam.FlatMap(lambda r: [(r[1].sha256, r[0])] if r[1].sha256 else []),
        } | "JoinSha" >> self.grouping.cogroup("JoinSha")
        ref_phashes = (
            refs
            | "RefNode" >> beam.FlatMap(_ref_node)
            | "OnePerNode" >> beam.CombinePerKey(min)
            | "PayloadFirst" >> beam.Map(lambda node_hit: (node_hit[1], *node_hit[0]))
        )
        queries = slims | "SamplePhash" >> beam.FlatMap(lambda s: [(s[0], s[2], s[3])] if s[2] is not None else [])
        near = (queries, ref_phashes) | "MatchRefs" >> NearMatches(
            self.cfg.k, self.cfg.bucket_bits, self.cfg.veto(), self.grouping
        )
        return (
            (exact | "ExactHits" >> beam.FlatMap(_exact_hits), near)
            | "AllHits" >> beam.Flatten()
            | "WinningHit" >> beam.CombinePerKey(min)
        )

    def _groups(self, slims: beam.PCollection) -> tuple[beam.PCollection | None, beam.PCollection | None]:
        """(duplicates: (key, survivor key), groups: (key, group key)) of the samples left after references."""
        cfg, edges, duplicates = self.cfg, [], None
        if cfg.exact:
            split = (
                slims
                | "BySha" >> beam.Map(_sha_group)
                | "GroupSha" >> self.grouping.group("GroupSha")
                | "SplitExact" >> beam.ParDo(_SplitExact()).with_outputs("duplicates", main="survivors")
            )
            slims, duplicates = split.survivors, split.duplicates
            edges.append(duplicates | "ExactEdges" >> beam.KvSwap())
        if cfg.near:
            nodes = slims | "Phashes" >> beam.FlatMap(lambda s: [(s[0], s[2], s[3])] if s[2] is not None else [])
            edges.append(nodes | "NearPairs" >> NearPairs(cfg.k, cfg.bucket_bits, cfg.veto(), self.grouping))
        if not edges:
            return duplicates, None
        # Spilled, the rounds' partitions grow with the input too: one partition's edges is what a reader holds.
        components = ConnectedComponents(
            cfg.rounds, cfg.fallback_cap, max(cfg.partitions, self.grouping.partitions()), self.grouping, flatten=False
        )
        return duplicates, tuple(edges) | components

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, rows: beam.PCollection) -> Any:
        slims = rows | "Slim" >> beam.Map(slim)
        joined = {"row": rows | "RowByKey" >> beam.Map(lambda r: (r[fields.KEY], r))}
        if self.references:
            joined["hit"] = hits = self._reference_hits(rows.pipeline, slims)
            slims = (
                {"slim": slims | "SlimByKey" >> beam.Map(_by_key), "hit": hits}
                | "JoinHits" >> self.grouping.cogroup("JoinHits")
                | "DropMatched" >> beam.FlatMap(_unmatched)
            )
        duplicates, groups = self._groups(slims)
        if duplicates is not None:
            joined["duplicate"] = duplicates
        if groups is not None:
            joined["group"] = groups
        return (
            joined
            # Full rows meet their outcomes here (on disk when spilled): finer partitions keep a reader's rows few.
            | "JoinOutcomes" >> self.grouping.cogroup("JoinOutcomes", ROW_SCALE)
            | "Decide" >> beam.ParDo(_Decide()).with_outputs(REJECTED, GROUPS, main="kept")
        )
