"""Connected components of an edge list in Beam (large-star/small-star rounds), with union-find as the reference.

Alternating large-star and small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014) are unrolled a fixed number of times, since a Beam graph is static. Each round is two shuffles of the
edges only, bundled per partition of nodes rather than one element per edge. The rounds turn every component
into a star around its smallest node in O(log^2 n) rounds at worst, about log2 of the longest chain in practice.
A check then proves the result is a star forest: if it is, the labels come straight from it; if not, every
remaining edge goes to one worker for union-find, and more than `fallback_cap` edges fail the job loudly instead
of giving wrong groups. Components are transitive: A~B and B~C put A and C in one component however far apart A
and C are.
"""

import zlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.hints import small_grouping
from pipeline.spill import SHUFFLE, Grouping

Edge = tuple[Any, Any]  # two nodes; Beam needs the pair spelled out to accept it as (key, value)


class UnionFind:
    """Disjoint sets whose representative is always the smallest member: find() names the component's survivor."""

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, a: Hashable) -> Hashable:
        parent = self.parent
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return a

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def labels(self) -> dict:
        return {a: self.find(a) for a in list(self.parent)}


def components_pure(edges: Iterable[tuple]) -> dict:
    """{node: smallest node of its component} for every node of `edges` (union-find, one process)."""
    uf = UnionFind()
    for a, b in edges:
        uf.union(a, b)
    return uf.labels()


def large_star(u: Hashable, neighbors: Iterable) -> Iterator[Edge]:
    """Link every neighbor larger than u to the smallest node of u's closed neighborhood."""
    nbrs = set(neighbors)
    m = min(nbrs | {u})
    for v in nbrs:
        if v > u:
            yield v, m


def small_star(u: Hashable, smaller: Iterable) -> Iterator[Edge]:
    """Link u and its neighbors not larger than it to the smallest of them."""
    group = set(smaller) | {u}
    m = min(group)
    for v in group:
        if v != m:
            yield v, m


def _small_star_both_ways(u: Hashable, smaller: Iterable) -> Iterator[Edge]:
    # Both directions: what the next large-star groups by. large_star needs no re-keying for small-star, since
    # every edge (v, m) it emits already has v > m.
    for v, m in small_star(u, smaller):
        yield v, m
        yield m, v


ROOT, CHILD = "root", "child"


def star_role(u: Hashable, neighbors: Iterable) -> tuple | None:
    """(key, role) locating u in a star forest: (u, ROOT) if no neighbor is smaller, (parent, (CHILD, u)) if its
    only neighbor is smaller; None when u breaks the star shape (a smaller neighbor and more than one neighbor)."""
    nbrs = set(neighbors)
    if all(v > u for v in nbrs):
        return u, (ROOT,)
    if len(nbrs) == 1:
        return next(iter(nbrs)), (CHILD, u)
    return None


def star_labels(node: Hashable, roles: Iterable[tuple]) -> tuple[list[Edge], int]:
    """(labels, unsettled): a root labels itself and its children; children of a non-root are unsettled."""
    roles = list(roles)
    children = [r[1] for r in roles if r[0] == CHILD]
    if any(r[0] == ROOT for r in roles):
        return [(node, node)] + [(c, node) for c in children], 0
    return [], len(children)


def partition_of(node: Hashable, partitions: int) -> int:
    # crc32, not hash(): str hashes differ between worker processes.
    return zlib.crc32(str(node).encode()) % partitions


def by_partition(edges: Iterable[Edge], partitions: int) -> Iterator[tuple[int, list[Edge]]]:
    """Edges bundled by the partition of their first node: a shuffle then moves one list per partition pair
    instead of one element per edge, which is most of the cost of a round on a local runner."""
    out = defaultdict(list)
    for edge in edges:
        out[partition_of(edge[0], partitions)].append(edge)
    yield from out.items()


def adjacency(batches: Iterable[list[Edge]]) -> dict[Hashable, set]:
    adj = defaultdict(set)
    for batch in batches:
        for u, v in batch:
            adj[u].add(v)
    return adj


def _both_ways(edges: Iterable[Edge]) -> Iterator[Edge]:
    for a, b in edges:
        yield a, b
        yield b, a


class _Round(beam.DoFn):
    """One star step over the edges of one partition, re-bundled by the partition of the edges' first node."""

    def __init__(self, step, partitions: int):
        self.step, self.partitions = step, partitions

    def process(self, element: tuple) -> Iterator[tuple[int, list[Edge]]]:
        adj = adjacency(element[1])
        yield from by_partition((e for u, nbrs in adj.items() for e in self.step(u, nbrs)), self.partitions)


class _JudgeStars(beam.DoFn):
    """A handle of the last round's edges by partition -> roles by partition, and the count of nodes breaking the
    star shape (tagged "unsettled")."""

    def __init__(self, partitions: int, grouping: Grouping):
        self.partitions, self.grouping = partitions, grouping

    def process(self, handle: tuple) -> Iterator:
        for _, batches in self.grouping.open(handle):
            roles, unsettled = [], 0
            for u, nbrs in adjacency(batches).items():
                role = star_role(u, nbrs)
                if role is None:
                    unsettled += 1
                else:
                    roles.append(role)
            yield from by_partition(roles, self.partitions)
            yield beam.pvalue.TaggedOutput("unsettled", unsettled)


def _labels(batches: Iterable[list]) -> tuple[list[Edge], int]:
    """(labels, unsettled) of one partition's roles."""
    roles, unsettled, out = defaultdict(list), 0, []
    for batch in batches:
        for node, role in batch:
            roles[node].append(role)
    for node, node_roles in roles.items():
        labels, bad = star_labels(node, node_roles)
        out.extend(labels)
        unsettled += bad
    return out, unsettled


# The labels and the fallback both wait on the global unsettled count (a side input). They read the roles and edges
# again from their handles, so that what waits is the handles: spilled, the in-process runner holds no edge or label.
def _unsettled_roles(handle: tuple, grouping: Grouping) -> Iterator[int]:
    for _, batches in grouping.open(handle):
        yield _labels(batches)[1]


def _if_settled(handle: tuple, grouping: Grouping, unsettled: int) -> Iterator[Edge]:
    if unsettled == 0:
        for _, batches in grouping.open(handle):
            yield from _labels(batches)[0]


def _if_unsettled(handle: tuple, grouping: Grouping, unsettled: int) -> Iterator[tuple[None, list[Edge]]]:
    if unsettled:
        for _, batches in grouping.open(handle):
            yield None, [e for batch in batches for e in batch if e[0] > e[1]]


class _Finish(beam.DoFn):
    """The fallback: all edges in one place, union-find; refuses more than `cap` edges rather than run out of memory."""

    def __init__(self, rounds: int, cap: int):
        self.rounds, self.cap = rounds, cap

    def process(self, element: tuple) -> Iterator[Edge]:
        edges = [e for batch in element[1] for e in batch]
        if len(edges) > self.cap:
            raise RuntimeError(
                f"connected components did not converge in {self.rounds} rounds and {len(edges)} edges remain, "
                f"more than the {self.cap} one worker may finish; raise the number of rounds"
            )
        Metrics.counter("components", "fallback_edges").inc(len(edges))
        yield from components_pure(edges).items()


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) -> (node, label) for every node of an edge, label = the smallest node of its component.

    The rounds shuffle edges bundled into `partitions` groups by node: raise it with the number of edges so that
    one group's edges (about edges / partitions) fit a worker. `grouping` says how the rounds group (a shuffle, or
    spill files for flat memory on one machine). With flatten=False the labels come as a tuple of two PCollections
    (settled stars, the fallback's) for a consumer that takes tuples: a Flatten would make the in-process runner
    buffer every label."""

    def __init__(
        self,
        rounds: int,
        fallback_cap: int = 1_000_000,
        partitions: int = 16,
        grouping: Grouping = SHUFFLE,
        flatten: bool = True,
    ):
        super().__init__()
        self.rounds, self.fallback_cap, self.partitions = rounds, fallback_cap, partitions
        self.grouping, self.flatten = grouping, flatten

    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, edges: Any) -> beam.PCollection:
        n, group = self.partitions, self.grouping.group
        # Several edge PCollections are batched each where it is produced and only met in the first grouping.
        batches = tuple(
            pcoll
            | f"Batch{i}" >> beam.BatchElements(min_batch_size=1000, max_batch_size=100_000)
            | f"BothWays{i}" >> beam.FlatMap(lambda batch: by_partition(_both_ways(batch), n))
            for i, pcoll in enumerate(edges if isinstance(edges, tuple) else (edges,))
        )
        for r in range(self.rounds):
            batches = (
                batches
                | f"LargeStarGroup{r}" >> group(f"LargeStarGroup{r}")
                | f"LargeStar{r}" >> beam.ParDo(_Round(large_star, n))
                | f"SmallStarGroup{r}" >> group(f"SmallStarGroup{r}")
                | f"SmallStar{r}" >> beam.ParDo(_Round(_small_star_both_ways, n))
            )
        checked = batches | "CheckGroup" >> self.grouping.store("CheckGroup")
        roles = checked | "Roles" >> beam.ParDo(_JudgeStars(n, self.grouping)).with_outputs("unsettled", main="roles")
        by_node = roles.roles | "GroupRoles" >> self.grouping.store("GroupRoles")
        counts = (roles.unsettled, by_node | "CountUnsettled" >> beam.FlatMap(_unsettled_roles, self.grouping))
        with small_grouping(batches.pipeline):  # a count per partition
            unsettled = beam.pvalue.AsSingleton(counts | "Unsettled" >> beam.Flatten() | beam.CombineGlobally(sum))
        settled = by_node | "IfSettled" >> beam.FlatMap(_if_settled, self.grouping, unsettled)
        leftover = checked | "IfUnsettled" >> beam.FlatMap(_if_unsettled, self.grouping, unsettled)
        with small_grouping(batches.pipeline):  # one key: the fallback brings its (capped) edges to one place anyway
            gathered = leftover | "Gather" >> beam.GroupByKey()
        finished = gathered | "Finish" >> beam.ParDo(_Finish(self.rounds, self.fallback_cap))
        if not self.flatten:
            return settled, finished
        return (settled, finished) | "Labels" >> beam.Flatten()
