"""A non-local Beam FileSystem for tests: `memfs://`, objects in a process-wide dict, no folders (like gs://).

Beam finds FileSystem subclasses by their scheme(), so importing this module registers it. It lives in the test
process only: use it with the in-process FnApiRunner, never with a runner that starts workers elsewhere.
"""

import hashlib
import io
import os
import posixpath
import threading
from collections.abc import Iterator
from pathlib import Path

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "memfs"
PREFIX = f"{SCHEME}://"


class _Store:
    """path -> bytes, shared by every MemFileSystem instance (Beam makes a new one per call)."""

    lock = threading.Lock()
    files: dict[str, bytes] = {}


class _Writer(io.BytesIO):
    """Bytes become visible at `path` on close, whole, as an object store commits an upload."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self) -> None:
        if not self.closed:
            with _Store.lock:
                _Store.files[self._path] = self.getvalue()
        super().close()


class MemFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath.rstrip("/"), *paths)

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # no folders

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        with _Store.lock:
            found = [(p, len(b)) for p, b in _Store.files.items() if p.startswith(dir_or_prefix)]
        for path, size in sorted(found):
            yield FileMetadata(path, size, 0.0)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        assert compression_type == CompressionTypes.UNCOMPRESSED, "the pipeline stores bytes as given"
        return _Writer(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        with _Store.lock:
            if path not in _Store.files:
                raise BeamIOError("open failed", {path: FileNotFoundError(path)})
            return io.BytesIO(_Store.files[path])

    def copy(self, source_file_names, destination_file_names) -> None:
        with _Store.lock:
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                _Store.files[dst] = _Store.files[src]

    def rename(self, source_file_names, destination_file_names) -> None:
        with _Store.lock:
            missing = {s: FileNotFoundError(s) for s in source_file_names if s not in _Store.files}
            if missing:
                raise BeamIOError("rename failed", missing)
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                _Store.files[dst] = _Store.files.pop(src)

    def exists(self, path: str) -> bool:
        with _Store.lock:
            return path in _Store.files

    def size(self, path: str) -> int:
        with _Store.lock:
            return len(_Store.files[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        with _Store.lock:
            return hashlib.sha256(_Store.files[path]).hexdigest()

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, self.size(path), 0.0)

    def delete(self, paths) -> None:
        with _Store.lock:
            missing = {p: FileNotFoundError(p) for p in paths if p not in _Store.files}
            if missing:
                raise BeamIOError("delete failed", missing)
            for path in paths:
                del _Store.files[path]


def files_under(root: str) -> dict[str, bytes]:
    """{relative path: bytes} of every object under `root`."""
    prefix = root.rstrip("/") + "/"
    with _Store.lock:
        return {p[len(prefix) :]: b for p, b in _Store.files.items() if p.startswith(prefix)}


def upload(local: str | os.PathLike, root: str) -> str:
    """Copy a local folder's files under `root`, at the same relative paths; returns `root`."""
    base = Path(local)
    with _Store.lock:
        for path in base.rglob("*"):
            if path.is_file():
                _Store.files[f"{root.rstrip('/')}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
    return root


def clear(root: str) -> None:
    prefix = root.rstrip("/") + "/"
    with _Store.lock:
        for path in [p for p in _Store.files if p.startswith(prefix)]:
            del _Store.files[path]
