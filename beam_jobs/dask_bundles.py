"""What a Dask task of the DaskRunner (beam_jobs.dask_runner) runs on a worker: one partition as one Beam bundle
of a ParDo, or of a chain of ParDos fused into one task, with the DoFn instances this worker process keeps set up.
"""

import atexit
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

_LOGGER = logging.getLogger(__name__)

MAIN = None  # the tag of a ParDo's main output


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
        elif tag is MAIN:
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


def run_bundle(items: Iterable, spec: bytes, label: str, tagged: bool, views: Sequence, *side_values) -> list:
    """One dask partition as one Beam bundle: start, every element, finish; (tag, value) out, or values when the
    ParDo has one output (`tagged` false).

    `spec` is the pickled (DoFn, args, kwargs); the DoFn instance comes from this process's pool, set up once."""
    instance = _POOL.take(spec)
    out: list = []
    receivers = _TagReceivers(out, tagged)
    handler = _OutputHandler(
        window_fn=GlobalWindows(),
        main_receivers=receivers[MAIN],
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


def with_tag(pairs: Iterable[tuple], tag) -> list:
    return [value for t, value in pairs if t == tag]


@dataclass(frozen=True)
class Stage:
    """One ParDo of a fused chain; its pickled spec and then its `sides` side-input values are the task's arguments."""

    label: str
    tagged: bool  # (tag, value) out, for a ParDo with several outputs; plain values otherwise
    views: tuple  # (view class, view options) of each side input
    sides: int


def run_chain(items: Iterable, select: tuple, stages: Sequence[Stage], *args) -> list:
    """One partition through a chain of ParDos, each a bundle in turn, in one task: a chain of n ParDos was n tasks,
    and each task costs the scheduler a few ms however little it does. `select` is (tag,) to read one output of a
    ParDo with several (the input is its (tag, value) pairs), or () to read the input as it is."""
    if select:
        items = with_tag(items, select[0])
    at = 0
    for stage in stages:
        spec, sides = args[at], args[at + 1 : at + 1 + stage.sides]
        at += 1 + stage.sides
        items = run_bundle(items, spec, stage.label, stage.tagged, stage.views, *sides)
    return items
