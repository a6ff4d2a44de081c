"""`--runner=DaskRunner`: Beam's DaskRunner, with the translations our jobs need done right.

Beam's runner (apache_beam.runners.dask, 2.78) translates a pipeline into dask.bag operations, but as shipped it
(1) computes only the last transform it visited, so every other sink of a job with several outputs never runs;
(2) puts the main and the tagged outputs of a ParDo in one bag, so each consumer sees every output's elements;
(3) recomputes a side input inside every task that reads it (the side input's graph is not a dependency of the
task), which reruns all the work upstream of it once per partition; (4) keeps a GroupByKey's output in as many
partitions as its input had and makes Reshuffle a no-op, so a job that starts from a handful of files runs on one
or two workers; (5) maps transforms it does not know (a source's Read, a stateful DoFn) to an identity that
silently yields nothing; (6) sets a DoFn up and tears it down in every bundle (partition), which Beam's own workers
do once per instance; (7) runs each ParDo as its own task per partition and every GroupByKey as a shuffle of n^2
tasks, and at a few ms of the scheduler's time a task, a build's phase of small records was mostly that overhead.
This module is a subclass, not a fork: the same options and the same bag operations, with a visitor that keeps one
bag per output PCollection, a side input computed once as a dask dependency of the tasks that read it, shuffles
into enough partitions for the cluster, every leaf computed, DoFns set up once per worker process
(beam_jobs.dask_bundles), a chain of ParDos fused into one task per partition (as Beam's runners fuse stages), a
grouping our transforms mark small (pipeline.hints) gathered in one task, and a clear error for a transform it
cannot run. Only the global window is supported, which is all a batch job of ours uses.
"""

import logging
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnSignature
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import (
    _Create,
    _Flatten,
    _GroupAlsoByWindow,
    _GroupByKeyOnly,
    _Reshuffle,
    dask_overrides,
)
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue
from dask.bag.core import groupby_tasks
from dask.base import tokenize

from beam_jobs.dask_bundles import Stage, run_chain, with_tag
from pipeline.hints import SMALL_GROUPING

_LOGGER = logging.getLogger(__name__)

# The name a user passes (--runner=DaskRunner); Beam itself only knows the runner by its module path.
NAME = "DaskRunner"
QUALIFIED_NAME = f"{__name__}.DaskRunner"

# Partitions per worker thread for a shuffle's output: a few per thread balance uneven groups without making
# thousands of tiny tasks.
PARTITIONS_PER_THREAD = 4


class WitDaskOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--dask_shuffle_partitions",
            type=int,
            default=None,
            help="partitions of a GroupByKey's or Reshuffle's output (default: 4 per worker thread of the cluster)",
        )


def _concat(parts: Iterable[list]) -> list:
    return [value for part in parts for value in part]


def _group_values(kv: tuple) -> tuple:
    key, items = kv  # (key, WindowedValue) pairs from the GroupByKey's ReifyWindows step
    return key, [wv.value if isinstance(wv, WindowedValue) else wv for _, wv in items]


def _gather_groups(parts: Iterable[list], partitions: int) -> list[list]:
    """A small grouping's every (key, WindowedValue) pair, grouped in one task: `partitions` lists of (key, values),
    a key in the partition that a shuffle would give it."""
    groups: dict = {}
    for part in parts:
        for key, wv in part:
            groups.setdefault(key, []).append(wv.value if isinstance(wv, WindowedValue) else wv)
    out: list[list] = [[] for _ in range(partitions)]
    for key, values in groups.items():
        out[_key_hash(key) % partitions].append((key, values))
    return out


def _is_small(node: AppliedPTransform) -> bool:
    """Whether the grouping, or a transform it is part of, says it carries few, small records (pipeline.hints)."""
    while node is not None:
        if SMALL_GROUPING in (node.annotations or {}):
            return True
        node = node.parent
    return False


def _first(item: tuple):
    return item[0]


def _key_hash(key) -> int:
    """Where a GroupByKey's key goes (the partition is this mod the partition count): an int key goes round-robin.

    Our units of work are keyed by small ints (a bucket, a spill partition), a few per partition: dask's default
    hash (a token) threw 40 buckets into 8 partitions unevenly, 2 to 8 each, and the worker with the most fetched
    long after the other was idle. Other keys keep dask's token, the same in every process."""
    if type(key) is int:
        return key
    return int(tokenize(key), 16)


class _Consumers(PipelineVisitor):
    """How many transforms read each PCollection, as a main or a side input."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def visit_transform(self, node: AppliedPTransform) -> None:
        self.counts.update(p for p in node.inputs if isinstance(p, pvalue.PCollection))
        self.counts.update(si.pvalue for si in node.side_inputs)


@dataclass(frozen=True)
class _Chain:
    """ParDos not yet made into a bag: those of a PCollection that one ParDo reads join that ParDo's chain."""

    source: object  # the bag the first ParDo reads
    select: tuple  # (tag,) when that bag holds the (tag, value) pairs of a ParDo with several outputs
    stages: tuple[Stage, ...]
    args: tuple  # each stage's spec and side values, in order


class _Visitor(PipelineVisitor):
    """Builds one dask bag per PCollection, leaf transform by leaf transform; a ParDo whose output only one ParDo
    reads is fused with it into one task per partition (the chain is made a bag when something else reads it)."""

    def __init__(self, bag_kwargs: dict, shuffle_partitions: int, consumers: Counter):
        self.bag_kwargs = bag_kwargs
        self.shuffle_partitions = shuffle_partitions
        self.consumers = consumers
        self.bags: dict[pvalue.PCollection, object] = {}
        self.chains: dict[pvalue.PCollection, _Chain] = {}
        self.tagged: dict[pvalue.PCollection, tuple] = {}  # an output of a multi-output ParDo: (its pairs, tag)
        self.produced: list[pvalue.PCollection] = []

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        main = [p for p in node.inputs if isinstance(p, pvalue.PCollection)]
        outputs = {tag: pc for tag, pc in node.outputs.items() if isinstance(pc, pvalue.PCollection)}
        self.produced.extend(outputs.values())
        if isinstance(transform, beam.ParDo) and not isinstance(transform, _GroupAlsoByWindow):
            (pc,) = main
            self._pardo(node, pc, outputs)
            return
        inputs = [self.bag(p) for p in main]
        if isinstance(transform, _GroupAlsoByWindow):
            (bag,) = inputs  # the grouping itself already dropped the (global) windows
            self._set(outputs, bag)
        elif isinstance(transform, _Create):
            self._set(outputs, self._create(transform.values))
        elif isinstance(transform, _GroupByKeyOnly):
            (bag,) = inputs
            if _is_small(node):
                self._set(outputs, self._gather(bag))
                return
            # A task shuffle keeps its input's partition count (dask ignores npartitions there), so set it first;
            # "disk" would shuffle through one machine's local files, wrong on a real cluster.
            spread = self._spread(bag)
            self._set(outputs, groupby_tasks(spread, _first, hash=_key_hash).map(_group_values))
        elif isinstance(transform, _Reshuffle):
            (bag,) = inputs
            self._set(outputs, self._spread(bag))
        elif isinstance(transform, _Flatten):
            import dask.bag as db

            self._set(outputs, db.concat(inputs))
        else:
            raise NotImplementedError(
                f"the Dask runner cannot run {node.full_label!r} ({type(transform).__name__}); "
                "run this job on the default runner"
            )

    def bag(self, pc: pvalue.PCollection):
        """The bag of a PCollection; a pending chain or one output of a multi-output ParDo is made one now."""
        if pc not in self.bags:
            if pc in self.chains:
                self.bags[pc] = self._run(self.chains.pop(pc))
            else:
                pairs, tag = self.tagged.pop(pc)
                self.bags[pc] = pairs.map_partitions(with_tag, tag)
        return self.bags[pc]

    def _spread(self, bag):
        # Exactly the shuffle's partition count, whatever the input's: kept, counts grow through every Flatten (a
        # concat adds its inputs' partitions) and the next shuffle, and the build's ~50 groupings made 600k tasks
        # from 130 candidates. Fewer partitions coalesce neighbours; more split them.
        if bag.npartitions == self.shuffle_partitions:
            return bag
        return bag.repartition(npartitions=self.shuffle_partitions)

    def _gather(self, bag):
        # A task shuffle of n partitions is n^2 + 3n tasks, each a few ms of the scheduler's time however little it
        # moves: the ~30 groupings of spill paths and counts in a build were most of its dedup phase's 5,000 tasks.
        # Grouped in one task, the same grouping is n + 1 tasks, and its records are paths and counts.
        from dask.bag import Bag
        from dask.highlevelgraph import HighLevelGraph

        n = self.shuffle_partitions
        whole = bag.reduction(list, partial(_gather_groups, partitions=n), split_every=False)
        name = f"gathered-{tokenize(whole.key, n)}"
        layer = {(name, i): (operator.getitem, whole.key, i) for i in range(n)}
        return Bag(HighLevelGraph.from_collections(name, layer, dependencies=[whole]), name, n)

    def _set(self, outputs: dict, bag) -> None:
        for pc in outputs.values():
            self.bags[pc] = bag

    def _create(self, values: Sequence):
        import dask.bag as db

        kwargs = self.bag_kwargs or {"partition_size": 1}  # our Creates list units of work: one task each
        return db.from_sequence(list(values), **kwargs)

    def _pardo(self, node: AppliedPTransform, pc: pvalue.PCollection, outputs: dict) -> None:
        transform = node.transform
        if DoFnSignature(transform.fn).is_stateful_dofn():
            raise NotImplementedError(f"the Dask runner cannot run the stateful DoFn of {node.full_label!r}")
        tagged = len(outputs) > 1
        stage, args = self._stage(node, tagged)
        if pc in self.chains and self.consumers[pc] == 1:
            before = self.chains.pop(pc)  # read by this ParDo alone: one task does both
        elif pc in self.tagged:
            pairs, tag = self.tagged[pc]
            before = _Chain(pairs, (tag,), (), ())
        else:
            before = _Chain(self.bag(pc), (), (), ())
        chain = _Chain(before.source, before.select, (*before.stages, stage), (*before.args, *args))
        if not tagged:
            (out,) = outputs.values()
            self.chains[out] = chain
            return
        pairs = self._run(chain)
        for tag, out in outputs.items():
            self.tagged[out] = (pairs, tag)  # the main output's tag is None, as dask_bundles.MAIN

    def _stage(self, node: AppliedPTransform, tagged: bool) -> tuple[Stage, list]:
        import dask

        transform = node.transform
        args, kwargs = transform.args, transform.kwargs  # side inputs replaced by placeholders the invoker fills
        views, side_values = [], []
        for si in node.side_inputs:
            if not isinstance(si.pvalue.windowing.windowfn, GlobalWindows):
                raise NotImplementedError(f"{node.full_label!r}: the Dask runner runs global windows only")
            views.append((type(si), si._view_options()))
            # Computed once, as one task every task that reads it depends on (Beam's runner recomputes it per task).
            # A bag reduction, not a delayed over the bag's partitions: dask culls the whole graph once per delayed
            # argument, which a job with hundreds of partitions and stages takes minutes to build.
            # Unoptimized: an optimized copy would fuse (rename) the upstream tasks and run them a second time.
            whole = self.bag(si.pvalue).reduction(list, _concat, split_every=False)
            side_values.append(whole.to_delayed(optimize_graph=False))
        # One task holds the pickled DoFn and its arguments, which every bundle task depends on: embedded in each
        # task, a DoFn with a big config (a query list, a model's path and tables) made graphs of tens of MB.
        spec = dask.delayed(pickler.dumps((transform.fn, list(args), dict(kwargs))), traverse=False)
        return Stage(node.full_label, tagged, tuple(views), len(side_values)), [spec, *side_values]

    @staticmethod
    def _run(chain: _Chain):
        return chain.source.map_partitions(run_chain, chain.select, chain.stages, *chain.args)

    def leaves(self) -> list:
        """The bags nobody reads: computing them all runs every sink (their shared parents once)."""
        seen, out = set(), []
        for pc in self.produced:
            if self.consumers[pc] == 0:
                bag = self.bag(pc)
                if bag.name not in seen:
                    seen.add(bag.name)
                    out.append(bag)
        return out


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the fixes above; the same --dask_* options."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        dask_options.pop("lazy_side_inputs", None)  # side inputs are computed once, as dependencies
        client = ddist.Client(**dask_options)
        partitions = options.view_as(WitDaskOptions).dask_shuffle_partitions
        if partitions is None:
            partitions = PARTITIONS_PER_THREAD * max(1, sum(client.nthreads().values()))
        try:
            pipeline.replace_all(dask_overrides())
            consumers = _Consumers()
            pipeline.visit(consumers)
            visitor = _Visitor(bag_kwargs, partitions, consumers.counts)
            pipeline.visit(visitor)
        except Exception:
            client.close()
            raise
        leaves = visitor.leaves()
        _LOGGER.info("computing %d leaves over %d shuffle partitions", len(leaves), partitions)
        futures = client.compute(leaves)  # one graph: parents shared by several leaves run once
        return _Result(client, futures)


class _Result(beam_dask.DaskRunnerResult):
    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close()
