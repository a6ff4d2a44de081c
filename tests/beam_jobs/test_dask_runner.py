"""Our DaskRunner on a real dask.distributed cluster: the Beam semantics that Beam's own DaskRunner gets wrong."""

import os
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.options import DASK_RUNNER, _dask_runner_by_name


def _note(x, folder: str, name: str):
    """Appends one line per call (value and worker pid): side effects that count how often a step ran, and where."""
    with open(os.path.join(folder, f"{name}.txt"), "a") as f:
        f.write(f"{x!r}\t{os.getpid()}\n")
    return x


def _lines(folder: Path, name: str) -> list[tuple[str, str]]:
    path = folder / f"{name}.txt"
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()] if path.exists() else []


def _options(cluster) -> PipelineOptions:
    return PipelineOptions([f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.address}"])


def _odd_apart(x):
    yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x


def test_every_sink_runs_and_a_side_input_is_computed_once(dask_cluster, tmp_path):
    out = str(tmp_path)
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        src = p | "Src" >> beam.Create(list(range(8))) | "Up" >> beam.Map(_note, out, "up")
        total = src | beam.CombineGlobally(sum)
        _ = src | "A" >> beam.Map(_note, out, "a")
        _ = (
            p
            | "Many" >> beam.Create(list(range(40)))
            | "WithTotal" >> beam.Map(lambda x, t: (x, t), beam.pvalue.AsSingleton(total))
            | "B" >> beam.Map(_note, out, "b")
        )
    assert len(_lines(tmp_path, "up")) == 8  # once per element, though three branches and 40 tasks read it
    assert sorted(int(v) for v, _ in _lines(tmp_path, "a")) == list(range(8))
    assert sorted(v for v, _ in _lines(tmp_path, "b")) == sorted(repr((x, 28)) for x in range(40))
    assert len({pid for _, pid in _lines(tmp_path, "b")}) == 2  # the work is spread over both workers


def test_tagged_outputs_reach_only_their_consumers(dask_cluster, tmp_path):
    out = str(tmp_path)
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        parts = p | beam.Create(list(range(10))) | beam.ParDo(_odd_apart).with_outputs("odd", main="even")
        _ = parts.even | "Even" >> beam.Map(_note, out, "even")
        _ = parts.odd | "Odd" >> beam.Map(_note, out, "odd")
        _ = (parts.even, parts.odd) | beam.Flatten() | "All" >> beam.Map(_note, out, "all")
    assert sorted(int(v) for v, _ in _lines(tmp_path, "even")) == [0, 2, 4, 6, 8]
    assert sorted(int(v) for v, _ in _lines(tmp_path, "odd")) == [1, 3, 5, 7, 9]
    assert sorted(int(v) for v, _ in _lines(tmp_path, "all")) == list(range(10))


def _slowly_sorted(key, values):
    time.sleep(0.3)  # work worth moving: dask keeps instant tasks beside their input data, on one worker
    return key, sorted(values)


def test_a_group_by_key_from_one_input_spreads_over_the_workers(dask_cluster, tmp_path):
    out = str(tmp_path)
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        _ = (
            p
            | beam.Create(["one input file"])
            | beam.FlatMap(lambda _: [(k % 16, k) for k in range(160)])
            | beam.GroupByKey()
            | beam.MapTuple(_slowly_sorted)
            | beam.Map(_note, out, "groups")
        )
    groups = _lines(tmp_path, "groups")
    assert sorted(eval(v)[0] for v, _ in groups) == list(range(16))  # noqa: S307 - our own repr
    assert all(eval(v)[1] == list(range(eval(v)[0], 160, 16)) for v, _ in groups)  # noqa: S307
    assert len({pid for _, pid in groups}) == 2


class _Counted(beam.DoFn):
    """Notes each setup and each bundle with its worker pid and instance, to count how often setup ran."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self):
        _note(id(self), self.folder, "setup")

    def start_bundle(self):
        _note(id(self), self.folder, "bundle")

    def process(self, x):
        yield x


def test_a_dofn_is_set_up_once_per_worker_and_reused_across_bundles(dask_cluster, tmp_path):
    out = str(tmp_path)
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        _ = p | beam.Create(list(range(40))) | beam.ParDo(_Counted(out)) | beam.Map(_note, out, "out")
    assert sorted(int(v) for v, _ in _lines(tmp_path, "out")) == list(range(40))
    bundles, setups = _lines(tmp_path, "bundle"), _lines(tmp_path, "setup")
    assert len(bundles) == 40  # one task, one bundle per element: Create's partitions hold one unit of work each
    assert 1 <= len(setups) <= 2  # Beam's rule: setup once per instance, an instance per worker thread here
    assert set(bundles) <= set(setups)  # every bundle ran on an instance that was set up


class _Stateful(beam.DoFn):
    COUNT = beam.transforms.userstate.CombiningValueStateSpec("count", sum)

    def process(self, kv, count=beam.DoFn.StateParam(COUNT)):  # noqa: B008 - Beam's way to declare state
        count.add(1)
        yield kv


def test_what_it_cannot_run_is_a_clear_error_not_an_empty_result(dask_cluster):
    with (
        pytest.raises(NotImplementedError, match="stateful DoFn of 'Stateful'"),
        beam.Pipeline(options=_options(dask_cluster)) as p,
    ):
        _ = p | beam.Create([("k", 1)]) | "Stateful" >> beam.ParDo(_Stateful())


def test_the_runner_is_chosen_by_its_short_name():
    assert _dask_runner_by_name(["--runner=DaskRunner", "--x"]) == [f"--runner={DASK_RUNNER}", "--x"]
    assert _dask_runner_by_name(["--runner", "DaskRunner"]) == ["--runner", DASK_RUNNER]
    assert _dask_runner_by_name(["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"]) == [
        f"--runner={DASK_RUNNER}"
    ]
    assert _dask_runner_by_name(["--runner=FnApiRunner"]) == ["--runner=FnApiRunner"]


def _task_of(x, folder: str, name: str):
    """Notes the dask task an element is processed in."""
    from distributed import get_worker

    return _note((x, get_worker().get_current_task()), folder, name)[0]


def test_a_chain_of_pardos_runs_as_one_task_per_partition(dask_cluster, tmp_path):
    out = str(tmp_path)
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        first = p | beam.Create(list(range(12))) | "First" >> beam.Map(_task_of, out, "first")
        _ = first | "Branch" >> beam.Map(_note, out, "branch")  # a second reader: First is not fused into either
        _ = first | "Second" >> beam.Map(_task_of, out, "second") | "Third" >> beam.Map(_task_of, out, "third")
    tasks = {}
    for name in ("first", "second", "third"):
        lines = [eval(v) for v, _ in _lines(tmp_path, name)]  # noqa: S307 - our own repr
        assert sorted(x for x, _ in lines) == list(range(12))  # once per element, though First is read twice
        tasks[name] = dict(lines)
    assert sorted(int(v) for v, _ in _lines(tmp_path, "branch")) == list(range(12))
    assert all(tasks["second"][x] == tasks["third"][x] for x in range(12))  # one task runs both
    assert all(tasks["first"][x] != tasks["second"][x] for x in range(12))


def test_a_grouping_marked_small_gives_the_groups_a_shuffle_gives(dask_cluster):
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.hints import small_grouping

    pairs = [(k % 7, k) for k in range(70)]
    expected = [(k, sorted(v for kk, v in pairs if kk == k)) for k in range(7)]
    with beam.Pipeline(options=_options(dask_cluster)) as p:
        src = p | beam.Create(pairs)
        with small_grouping(p):
            small = src | "Small" >> beam.GroupByKey()
        big = src | "Big" >> beam.GroupByKey()
        assert_that(small | "SortS" >> beam.MapTuple(lambda k, v: (k, sorted(v))), equal_to(expected), label="S")
        assert_that(big | "SortB" >> beam.MapTuple(lambda k, v: (k, sorted(v))), equal_to(expected), label="B")
