"""`--runner=DaskRunner`: Beam's DaskRunner, with the translations our jobs need done right.

Beam's runner (apache_beam.runners.dask, 2.78) translates a pipeline into dask.bag operations, but as shipped it
(1) computes only the last transform it visited, so every other sink of a job with several outputs never runs;
(2) puts the main and the tagged outputs of a ParDo in one bag, so each consumer sees every output's elements;
(3) recomputes a side input inside every task that reads it (the side input's graph is not a dependency of the
task), which reruns all the work upstream of it once per partition; (4) keeps a GroupByKey's output in as many
partitions as its input had and makes Reshuffle a no-op, so a job that starts from a handful of files runs on one
or two workers; (5) maps transforms it does not know (a source's Read, a stateful DoFn) to an identity that
silently yields nothing; (6) sets a DoFn up and tears it down in every bundle (partition), which Beam's own workers
do once per instance. This module is a subclass, not a fork: the same options and the same bag operations, with
a visitor that keeps one bag per output PCollection, a side input computed once as a dask dependency of the tasks
that read it, shuffles into enough partitions for the cluster, every leaf computed, DoFns set up once per worker
process, and a clear error for a transform it cannot run. Only the global window is supported, which is all a
batch job of ours uses.
"""

import atexit
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
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
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue
from dask.bag.core import groupby_tasks
from dask.base import tokenize

_LOGGER = logging.getLogger(__name__)

# The name a user passes (--runner=DaskRunner); Beam itself only knows the runner by its module path.
NAME = "DaskRunner"
QUALIFIED_NAME = f"{__name__}.DaskRunner"

# Partitions per worker thread for a shuffle's output: a few per thread balance uneven groups without making
# thousands of tiny tasks.
PARTITIONS_PER_THREAD = 4

_MAIN = None  # the tag of a ParDo's main output


class WitDaskOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--dask_shuffle_partitions",
            type=int,
            default=None,
            help="partitions of a GroupByKey's or Reshuffle's output (default: 4 per worker thread of the cluster)",
        )


def _global(value) -> WindowedValue:
    return WindowedValue(value, 0, (GlobalWindow(),))


class _TagReceiver(Receiver):
    """Collects a DoFn's outputs as (tag, value): the tag decides which output bag a value goes to."""

    def __init__(self, tag, out: list):
        self.tag = tag
        self.out = out

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append((self.tag, windowed_value.value))


class _ValueReceiver(Receiver):
    """Collects the values of a ParDo that has one output: no tags, and no task per partition to strip them."""

    def __init__(self, out: list):
        self.out = out

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append(windowed_value.value)


class _TagReceivers(dict):
    def __init__(self, out: list, tagged: bool):
        super().__init__()
        self.out = out
        self.tagged = tagged

    def __missing__(self, tag):
        if self.tagged:
            receiver = _TagReceiver(tag, self.out)
        elif tag is _MAIN:
            receiver = _ValueReceiver(self.out)
        else:
            raise ValueError(f"a DoFn output to the undeclared tag {tag!r}; declare it with .with_outputs()")
        self[tag] = receiver
        return receiver


class _DoFnPool:
    """Set-up DoFn instances of this worker process, by pickled spec, lent to one bundle at a time.

    Beam's workers reuse a DoFn across bundles and call setup once per instance; so do we. Unpickled and set up per
    bundle, a DoFn that opens a thread pool or loads a model in setup paid that for each of the thousands of
    partitions of a job. An instance is lent to one bundle at a time, so two threads of a worker never share one.
    The least recently used specs are torn down past `MAX_SPECS`, and the rest when the process exits.
    """

    MAX_SPECS = 64

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: OrderedDict[bytes, list] = OrderedDict()

    def take(self, spec: bytes):
        with self.lock:
            instances = self.idle.get(spec)
            if instances:
                self.idle.move_to_end(spec)
                return instances.pop()
        return _Instance(*pickler.loads(spec))

    def give_back(self, spec: bytes, instance: "_Instance") -> None:
        with self.lock:
            self.idle.setdefault(spec, []).append(instance)
            self.idle.move_to_end(spec)
            evicted = []
            while len(self.idle) > self.MAX_SPECS:
                evicted += self.idle.popitem(last=False)[1]
        for old in evicted:
            old.teardown()

    def close(self) -> None:
        with self.lock:
            instances = [i for idle in self.idle.values() for i in idle]
            self.idle.clear()
        for instance in instances:
            instance.teardown()


class _Instance:
    """One DoFn, its arguments and whether its setup has run."""

    def __init__(self, fn, args: Sequence, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.signature = DoFnSignature(fn)
        self.ready = False

    def teardown(self) -> None:
        if self.ready:
            try:
                self.fn.teardown()
            except Exception:  # teardown is best effort in Beam too; a failing one must not stop the others
                _LOGGER.warning("teardown of %r failed", self.fn, exc_info=True)


_POOL = _DoFnPool()
atexit.register(_POOL.close)


def _run_bundle(items: Iterable, spec: bytes, label: str, tagged: bool, views: Sequence, *side_values) -> list:
    """One dask partition as one Beam bundle: start, every element, finish; (tag, value) out, or values when the
    ParDo has one output (`tagged` false).

    `spec` is the pickled (DoFn, args, kwargs); the DoFn instance comes from this process's pool, set up once."""
    instance = _POOL.take(spec)
    out: list = []
    receivers = _TagReceivers(out, tagged)
    handler = _OutputHandler(
        window_fn=GlobalWindows(),
        main_receivers=receivers[_MAIN],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    side_inputs = [
        SideInputMap(view_class, view_options, [_global(v) for v in values])
        for (view_class, view_options), values in zip(views, side_values, strict=True)
    ]
    invoker = DoFnInvoker.create_invoker(
        instance.signature,
        handler,
        context=DoFnContext(label, state=None),
        side_inputs=side_inputs,
        input_args=list(instance.args),  # copies: an invoker may fill side-input placeholders in place
        input_kwargs=dict(instance.kwargs),
        user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
    )
    if not instance.ready:
        invoker.invoke_setup()
        instance.ready = True
    try:
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(_global(item))
        invoker.invoke_finish_bundle()
    except BaseException:
        instance.teardown()  # a failed bundle's instance may hold half a bundle's state: never lent again
        raise
    _POOL.give_back(spec, instance)
    return out


def _with_tag(pairs: Iterable[tuple], tag) -> list:
    return [value for t, value in pairs if t == tag]


def _concat(parts: Iterable[list]) -> list:
    return [value for part in parts for value in part]


def _group_values(kv: tuple) -> tuple:
    key, items = kv  # (key, WindowedValue) pairs from the GroupByKey's ReifyWindows step
    return key, [wv.value if isinstance(wv, WindowedValue) else wv for _, wv in items]


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


class _Visitor(PipelineVisitor):
    """Builds one dask bag per PCollection, leaf transform by leaf transform."""

    def __init__(self, bag_kwargs: dict, shuffle_partitions: int):
        self.bag_kwargs = bag_kwargs
        self.shuffle_partitions = shuffle_partitions
        self.bags: dict[pvalue.PCollection, object] = {}
        self.consumed: set[pvalue.PCollection] = set()

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = [self.bags[p] for p in node.inputs if isinstance(p, pvalue.PCollection)]
        self.consumed.update(p for p in node.inputs if isinstance(p, pvalue.PCollection))
        self.consumed.update(si.pvalue for si in node.side_inputs)
        outputs = {tag: pc for tag, pc in node.outputs.items() if isinstance(pc, pvalue.PCollection)}
        if isinstance(transform, _GroupAlsoByWindow):
            (bag,) = inputs  # the grouping itself already dropped the (global) windows
            self._set(outputs, bag)
        elif isinstance(transform, beam.ParDo):
            self._pardo(node, inputs, outputs)
        elif isinstance(transform, _Create):
            self._set(outputs, self._create(transform.values))
        elif isinstance(transform, _GroupByKeyOnly):
            (bag,) = inputs
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

    def _spread(self, bag):
        # Exactly the shuffle's partition count, whatever the input's: kept, counts grow through every Flatten (a
        # concat adds its inputs' partitions) and the next shuffle, and the build's ~50 groupings made 600k tasks
        # from 130 candidates. Fewer partitions coalesce neighbours; more split them.
        if bag.npartitions == self.shuffle_partitions:
            return bag
        return bag.repartition(npartitions=self.shuffle_partitions)

    def _set(self, outputs: dict, bag) -> None:
        for pc in outputs.values():
            self.bags[pc] = bag

    def _create(self, values: Sequence):
        import dask.bag as db

        kwargs = self.bag_kwargs or {"partition_size": 1}  # our Creates list units of work: one task each
        return db.from_sequence(list(values), **kwargs)

    def _pardo(self, node: AppliedPTransform, inputs: list, outputs: dict) -> None:
        import dask

        transform = node.transform
        if DoFnSignature(transform.fn).is_stateful_dofn():
            raise NotImplementedError(f"the Dask runner cannot run the stateful DoFn of {node.full_label!r}")
        (bag,) = inputs
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
            whole = self.bags[si.pvalue].reduction(list, _concat, split_every=False)
            side_values.append(whole.to_delayed(optimize_graph=False))
        # One task holds the pickled DoFn and its arguments, which every bundle task depends on: embedded in each
        # task, a DoFn with a big config (a query list, a model's path and tables) made graphs of tens of MB.
        spec = dask.delayed(pickler.dumps((transform.fn, list(args), dict(kwargs))), traverse=False)
        tagged = len(outputs) > 1
        pairs = bag.map_partitions(_run_bundle, spec, node.full_label, tagged, views, *side_values)
        if not tagged:
            self._set(outputs, pairs)
            return
        for tag, pc in outputs.items():
            self.bags[pc] = pairs.map_partitions(_with_tag, tag)  # the main output's tag is None, as _MAIN

    def leaves(self) -> list:
        """The bags nobody reads: computing them all runs every sink (their shared parents once)."""
        seen, out = set(), []
        for pc, bag in self.bags.items():
            if pc not in self.consumed and bag.name not in seen:
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
            visitor = _Visitor(bag_kwargs, partitions)
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
