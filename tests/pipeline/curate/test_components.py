"""Connected components: union-find, the star rounds as pure functions, and the Beam transform with its fallback."""

import random
from collections import defaultdict

import apache_beam as beam
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.curate.components import (
    ConnectedComponents,
    UnionFind,
    components_pure,
    large_star,
    small_star,
    star_labels,
    star_role,
)
from pipeline.spill import Grouping


def _chain(n: int, seed: int) -> list[tuple[str, str]]:
    """A path through n nodes visited in shuffled name order: the longest component a graph of n nodes has."""
    nodes = [f"n{i:04d}" for i in range(n)]
    random.Random(seed).shuffle(nodes)
    return list(zip(nodes, nodes[1:], strict=False))


def _rounds_to_settle(edges: list[tuple]) -> int:
    """The star rounds run in one process until every component is a star around its smallest node."""

    def grouped(pairs):
        g = defaultdict(set)
        for a, b in pairs:
            g[a].add(b)
        return g

    def settled(pairs):
        roles, unsettled = defaultdict(list), 0
        for u, nbrs in grouped(pairs + [(b, a) for a, b in pairs]).items():
            role = star_role(u, nbrs)
            if role is None:
                unsettled += 1
            else:
                roles[role[0]].append(role[1])
        return unsettled + sum(star_labels(node, r)[1] for node, r in roles.items()) == 0

    rounds = 0
    while not settled(edges):
        both = edges + [(b, a) for a, b in edges]
        large = [e for u, nbrs in grouped(both).items() for e in large_star(u, nbrs)]
        edges = [e for u, smaller in grouped(large).items() for e in small_star(u, smaller)]
        rounds += 1
    return rounds


def test_union_find_names_the_smallest_member():
    uf = UnionFind()
    for a, b in [("d", "c"), ("c", "e"), ("x", "y"), ("e", "b")]:
        uf.union(a, b)
    assert uf.labels() == {"b": "b", "c": "b", "d": "b", "e": "b", "x": "x", "y": "x"}


def test_stars_preserve_components_and_settle_in_logarithmic_rounds():
    edges = _chain(1000, seed=0) + [("m1", "m0"), ("m2", "m1")]
    assert _rounds_to_settle(edges) <= 10  # the default: a 1000-long chain of near-copies converges
    assert _rounds_to_settle([(f"n{i:04d}", f"n{i + 1:04d}") for i in range(999)]) <= 10  # keys in chain order


def test_star_roles_tell_a_star_from_anything_else():
    assert star_role("a", ["b", "c"]) == ("a", ("root",))
    assert star_role("c", ["a"]) == ("a", ("child", "c"))
    assert star_role("c", ["a", "d"]) is None  # a smaller and a larger neighbor: not a leaf
    assert star_labels("a", [("root",), ("child", "b")]) == ([("a", "a"), ("b", "a")], 0)
    assert star_labels("b", [("child", "c"), ("child", "d")]) == ([], 2)  # children of a non-root


def _run(edges: list[tuple], rounds: int, cap: int = 1_000_000, work: str | None = None) -> dict:
    p = TestPipeline()
    out = p | beam.Create(edges) | ConnectedComponents(rounds, fallback_cap=cap, grouping=Grouping(work, len(edges)))
    assert_that(out, equal_to(list(components_pure(edges).items())))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("fallback_edges"))["counters"]
    return {"fallback_edges": sum(c.committed for c in counters)}


_EDGES = _chain(60, seed=1) + [("x1", "x0"), ("x2", "x0"), ("y0", "y1")]


_SPILLED = pytest.mark.parametrize("spilled", [False, True], ids=["shuffled", "spilled"])


@_SPILLED
def test_beam_components_equal_union_find(spilled, tmp_path):
    assert _rounds_to_settle(_EDGES) <= 5
    assert _run(_EDGES, rounds=5, work=str(tmp_path) if spilled else None) == {"fallback_edges": 0}


@_SPILLED
def test_beam_components_not_settled_in_the_rounds_are_finished_by_union_find(spilled, tmp_path):
    assert _run(_EDGES, rounds=1, work=str(tmp_path) if spilled else None)["fallback_edges"] > 0


def test_beam_components_fail_loudly_rather_than_gather_too_many_edges():
    with pytest.raises(Exception, match="did not converge in 1 rounds"):
        _run(_chain(60, seed=2), rounds=1, cap=10)
