"""Grouping by partition through files, not a shuffle, and a spool of bytes on local disk: memory stays flat.

Beam's in-process runner holds every GroupByKey (and every PCollection that crosses a fused stage) in the runner's
memory, so a job that shuffles its rows needs memory in proportion to its input. `Spill` instead has each worker
write its (partition, item) elements to files, a few MB each, under a work folder on the dataset's file system;
only the file paths go through the GroupByKey, and whoever owns a partition reads its files back with
`read_spilled`. Memory is then one partition's items at the reader and a bounded buffer at each writer, whatever
the input's size. The same files work on any runner whose workers share that file system (a distributed runner
needs the work folder on shared storage or an object store, which is where a dataset lives anyway).

A bundle that fails and is retried may leave files nobody reads: only paths emitted by a bundle that committed
reach the readers, and the launcher removes the work folder when the job is done.
"""

import io
import pickle
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import fsio
from pipeline.batches import partition_of, partitions_for
from pipeline.hints import small_grouping

# A partition's buffer goes to a file when it reaches this many bytes: files of a few MB are cheap to list and read.
FILE_BYTES = 4 << 20
# All buffers together at most: past it the largest goes to a file, so a writer never holds more than this.
BUFFER_BYTES = 16 << 20
# Elements a spilled grouping's partition holds, about: what one reader has in memory at once.
PARTITION_ELEMENTS = 50_000


def partition_folder(root: str, partition: int) -> str:
    return fsio.join(root, f"{partition:06d}")


class SpillWriter:
    """Buffers pickled items per partition and writes each buffer as a new file under `root/<partition>/`.

    `add` returns the (partition, path) of any file it wrote; `close` writes what is left and returns those.
    Files are only ever created whole (never appended to), so the same code works on object stores.
    """

    def __init__(self, root: str, file_bytes: int = FILE_BYTES, buffer_bytes: int = BUFFER_BYTES):
        self.root = root
        self.file_bytes = file_bytes
        self.buffer_bytes = buffer_bytes
        self._buffers: dict[int, io.BytesIO] = {}
        self._buffered = 0
        self._prefix = uuid.uuid4().hex  # unique to this writer: two workers never write the same file

    def add(self, partition: int, item: Any) -> list[tuple[int, str]]:
        buf = self._buffers.get(partition)
        if buf is None:
            buf = self._buffers[partition] = io.BytesIO()
        before = buf.tell()
        pickle.dump(item, buf, protocol=pickle.HIGHEST_PROTOCOL)
        self._buffered += buf.tell() - before
        written = []
        if buf.tell() >= self.file_bytes:
            written.append(self._write(partition))
        while self._buffered > self.buffer_bytes:
            written.append(self._write(max(self._buffers, key=lambda p: self._buffers[p].tell())))
        return written

    def close(self) -> list[tuple[int, str]]:
        return [self._write(partition) for partition in sorted(self._buffers)]

    def _write(self, partition: int) -> tuple[int, str]:
        buf = self._buffers.pop(partition)
        self._buffered -= buf.tell()
        folder = partition_folder(self.root, partition)
        fsio.mkdirs(folder)
        path = fsio.join(folder, f"{self._prefix}-{uuid.uuid4().hex[:8]}.pkl")
        with fsio.atomic_write(path) as out:
            out.write(buf.getbuffer())
        return partition, path


def read_spilled(paths: Iterable[str]) -> Iterator[Any]:
    """The items of spill files, file by file in sorted path order (item order is not part of the contract)."""
    for path in sorted(paths):
        with io.BytesIO(fsio.read_bytes(path)) as f:
            while True:
                try:
                    yield pickle.load(f)  # noqa: S301 - files this job wrote itself, under its own work folder
                except EOFError:
                    break


class _SpillDoFn(beam.DoFn):
    def __init__(self, root: str, file_bytes: int, buffer_bytes: int):
        self.root = root
        self.file_bytes = file_bytes
        self.buffer_bytes = buffer_bytes

    def start_bundle(self) -> None:
        self.writer = SpillWriter(self.root, self.file_bytes, self.buffer_bytes)

    def process(self, element: tuple[int, Any]) -> Iterator[tuple[int, str]]:
        partition, item = element
        yield from self.writer.add(partition, item)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for written in self.writer.close():
            yield WindowedValue(written, GlobalWindow().max_timestamp(), [GlobalWindow()])


class Spill(beam.PTransform):
    """(partition: int, item) -> (partition, [spill file paths]), one element per partition that received items.

    Read a partition's items with `read_spilled(paths)`. Items are pickled, so any picklable value travels (a dict
    row, a Rows batch, a tuple); `root` is a folder only this transform writes to. The input may be several
    PCollections: each is written where it is produced, and only their paths are flattened (a Flatten of the rows
    themselves would make the in-process runner buffer them all between stages).
    """

    def __init__(self, root: str, file_bytes: int = FILE_BYTES, buffer_bytes: int = BUFFER_BYTES):
        super().__init__()
        self.root = root
        self.file_bytes = file_bytes
        self.buffer_bytes = buffer_bytes

    # A list of PCollections would be taken for values to Create: pass several as a tuple.
    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, keyed: Any) -> beam.PCollection:
        inputs = list(keyed) if isinstance(keyed, tuple) else [keyed]
        dofn = _SpillDoFn(self.root, self.file_bytes, self.buffer_bytes)
        paths = [pcoll | f"Write{i}" >> beam.ParDo(dofn) for i, pcoll in enumerate(inputs)]
        if len(paths) > 1:
            paths = [paths | "Paths" >> beam.Flatten()]
        with small_grouping(paths[0].pipeline):  # a few paths per bundle and partition, not the items
            grouped = paths[0] | "GroupPaths" >> beam.GroupByKey()
        return grouped | "Sorted" >> beam.MapTuple(lambda partition, paths: (partition, sorted(paths)))


def key_partition(key: Any, partitions: int) -> int:
    """The partition of a str, int or tuple key, the same in every worker process: that of its repr."""
    return partition_of(repr(key), partitions)


def spilled_groups(handle: tuple[int, list[str]]) -> Iterator[tuple[Any, list]]:
    """The (key, [values]) groups of one spilled partition (a StoreByKey handle), read into memory together."""
    groups = defaultdict(list)
    for key, value in read_spilled(handle[1]):
        groups[key].append(value)
    yield from groups.items()


class StoreByKey(beam.PTransform):
    """(key, value) -> handles (partition, [spill file paths]) whose spilled_groups are (key, [values]) as a
    GroupByKey would give, through spill files under `root` instead of a shuffle.

    Keys are spread over `partitions` by key_partition; whoever opens a handle holds its partition, about
    (elements / partitions): size `partitions` from the input's size. Keys must be str, int or tuples of them (their
    repr is their identity across processes). The handles are small, so a stage may wait on them (for a side
    input, say) without the in-process runner holding the elements, which stay on disk. Several PCollections (a
    tuple) are each spilled where they are produced: a Flatten would make that runner buffer its inputs."""

    def __init__(self, root: str, partitions: int):
        super().__init__()
        self.root, self.partitions = root, partitions

    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, pairs: Any) -> beam.PCollection:
        n = self.partitions
        inputs = list(pairs) if isinstance(pairs, tuple) else [pairs]
        keyed = tuple(
            pcoll | f"Partition{i}" >> beam.Map(lambda kv: (key_partition(kv[0], n), kv))
            for i, pcoll in enumerate(inputs)
        )
        return keyed | "Spill" >> Spill(self.root)


class _Shuffle(beam.PTransform):
    """GroupByKey of one PCollection or of a tuple of them (flattened first)."""

    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, pairs: Any) -> beam.PCollection:
        if isinstance(pairs, tuple):
            pairs = pairs | "Flatten" >> beam.Flatten()
        return pairs | "GroupByKey" >> beam.GroupByKey()


def _tagged(tags: tuple[str, ...], element: tuple[Any, list]) -> tuple[Any, dict[str, list]]:
    key, values = element
    out = {tag: [] for tag in tags}
    for tag, value in values:
        out[tag].append(value)
    return key, out


class Grouping:
    """How a stage brings elements together by key: Beam's shuffle when `work` is None, else spill files under it.

    The shuffle suits a distributed runner whose shuffle spills to disk; the in-process runner holds a shuffle in
    memory, so a job meant to run on one machine in flat memory passes a work folder and the expected number of
    elements, which sizes the partitions (PARTITION_ELEMENTS each). Picklable: DoFns that open handles carry it."""

    def __init__(self, work: str | None = None, elements: int | None = None):
        self.work, self.elements = work, elements

    def partitions(self, scale: int = 1) -> int:
        return partitions_for((self.elements or 0) * scale, PARTITION_ELEMENTS)

    def store(self, name: str, scale: int = 1) -> beam.PTransform:
        """(key, value) -> handles, opened with `open`: spilled partitions, or the shuffle's groups themselves.
        `name` is unique in the stage; `scale` elements are expected per element counted in `elements`."""
        if self.work is None:
            return _Shuffle()
        return StoreByKey(fsio.join(self.work, name), self.partitions(scale))

    def open(self, handle: tuple) -> Iterator[tuple[Any, list]]:
        """The (key, [values]) groups a handle of `store` stands for."""
        if self.work is None:
            yield handle
        else:
            yield from spilled_groups(handle)

    def group(self, name: str, scale: int = 1) -> beam.PTransform:
        """A GroupByKey of a PCollection or a tuple of them."""
        return _Grouped(self, name, scale)

    def cogroup(self, name: str, scale: int = 1) -> beam.PTransform:
        """A CoGroupByKey of {tag: PCollection of (key, value), or a tuple of them}: (key, {tag: [values]})."""
        return _CoGrouped(self, name, scale)


SHUFFLE = Grouping()  # Beam's shuffle: the default of stages that take a Grouping


class _Grouped(beam.PTransform):
    def __init__(self, grouping: Grouping, name: str, scale: int):
        super().__init__()
        self.grouping, self.name, self.scale = grouping, name, scale

    # Any, not PCollection | tuple: Beam warns about input hints that are not PCollections.
    def expand(self, pairs: Any) -> beam.PCollection:
        grouping = self.grouping
        return pairs | "Store" >> grouping.store(self.name, self.scale) | "Open" >> beam.FlatMap(grouping.open)


class _CoGrouped(_Grouped):
    # Any, not Mapping[str, PCollection]: Beam warns about input hints that are not PCollections.
    def expand(self, inputs: Any) -> beam.PCollection:
        if self.grouping.work is None:
            flat = {
                tag: value | f"Flatten{tag}" >> beam.Flatten() if isinstance(value, tuple) else value
                for tag, value in inputs.items()
            }
            return flat | "CoGroupByKey" >> beam.CoGroupByKey()
        tags = tuple(inputs)
        tagged = tuple(
            pcoll | f"Tag{tag}{i}" >> beam.Map(lambda kv, t: (kv[0], (t, kv[1])), tag)
            for tag, value in inputs.items()
            for i, pcoll in enumerate(value if isinstance(value, tuple) else (value,))
        )
        return super().expand(tagged) | "ByTag" >> beam.Map(lambda element: _tagged(tags, element))


class Spool:
    """Image bytes parked on local disk as they arrive, read back by key; the file vanishes when closed."""

    def __init__(self, folder: str | None = None):
        self._file = tempfile.TemporaryFile(dir=folder, prefix="wit-spool-")  # noqa: SIM115 - closed by close()
        self._where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def put(self, key: str, data: bytes) -> None:
        self._file.seek(self._end)
        self._file.write(data)
        self._where[key] = (self._end, len(data))
        self._end += len(data)

    def get(self, key: str) -> bytes:
        offset, size = self._where[key]
        self._file.seek(offset)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
