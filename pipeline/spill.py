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
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import fsio

# A partition's buffer goes to a file when it reaches this many bytes: files of a few MB are cheap to list and read.
FILE_BYTES = 4 << 20
# All buffers together at most: past it the largest goes to a file, so a writer never holds more than this.
BUFFER_BYTES = 64 << 20


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
    def expand(self, keyed: beam.PCollection | tuple) -> beam.PCollection:
        inputs = list(keyed) if isinstance(keyed, tuple) else [keyed]
        dofn = _SpillDoFn(self.root, self.file_bytes, self.buffer_bytes)
        paths = [pcoll | f"Write{i}" >> beam.ParDo(dofn) for i, pcoll in enumerate(inputs)]
        if len(paths) > 1:
            paths = [paths | "Paths" >> beam.Flatten()]
        return (
            paths[0]
            | "GroupPaths" >> beam.GroupByKey()
            | "Sorted" >> beam.MapTuple(lambda partition, paths: (partition, sorted(paths)))
        )


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
