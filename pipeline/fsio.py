"""Pipeline-side file access: local paths as before (fsync, hard links), any other scheme through Beam FileSystems.

Paths are strings: `pathlib` turns `gs://b/x` into `gs:/b/x`. A local path (no `scheme://`) takes the local branch of
each helper, which does exactly what the writers and readers did before this module existed; a remote one (gs://,
s3://, or any registered Beam FileSystem) goes through `apache_beam.io.filesystems.FileSystems`. Object stores have
no folders: `mkdirs` does nothing there, and a "folder" exists when something is under it.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TMP_SUFFIX = ".tmp"
_RAW = CompressionTypes.UNCOMPRESSED  # we store bytes as given: never let a ".gz" name compress or decompress them
_COPY_CHUNK = 8 << 20

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
    """Whether `path` is on the local file system (no `scheme://` prefix)."""
    return FileSystems.get_scheme(os.fspath(path)) is None


def join(root: PathLike, *parts: str) -> str:
    """`root/part/...` as a string; parts use "/" (as manifests write them) on every file system."""
    root = os.fspath(root)
    if is_local(root):
        return os.path.join(root, *(p for part in parts for p in part.split("/")))
    return FileSystems.join(root, *parts)


def split(path: PathLike) -> tuple[str, str]:
    """(parent, name) of a path, on any file system."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.split(path.rstrip(os.sep) or path)
    head, _, tail = path.rstrip("/").rpartition("/")
    return head, tail


def basename(path: PathLike) -> str:
    return split(path)[1]


def dirname(path: PathLike) -> str:
    return split(path)[0]


def _under(folder: str, limit: int | None = None) -> list[str]:
    """Paths of the files anywhere under a remote `folder`, sorted."""
    result = FileSystems.match([join(folder, "**")], limits=[limit])[0]
    return sorted(m.path for m in result.metadata_list)


def exists(path: PathLike) -> bool:
    """A file or folder at `path` (remote: a file, or anything under `path/`)."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.exists(path)
    return FileSystems.exists(path) or bool(_under(path, limit=1))


def is_file(path: PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isfile(path) if is_local(path) else FileSystems.exists(path)


def is_dir(path: PathLike) -> bool:
    """A local folder; remote: anything stored under `path/`."""
    path = os.fspath(path)
    return os.path.isdir(path) if is_local(path) else bool(_under(path, limit=1))


def size(path: PathLike) -> int | None:
    """Bytes of the file at `path`; None when there is no file there."""
    path = os.fspath(path)
    if is_local(path):
        return os.stat(path).st_size if os.path.isfile(path) else None
    found = FileSystems.match([path], limits=[1])[0].metadata_list  # no glob: the file itself, or nothing
    return found[0].size_in_bytes if found else None


def open_read(path: PathLike) -> BinaryIO:
    """A seekable binary reader; FileNotFoundError when there is no file."""
    path = os.fspath(path)
    if is_local(path):
        return open(path, "rb")
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return FileSystems.open(path, compression_type=_RAW)


def read_bytes(path: PathLike) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def list_files(folder: PathLike, pattern: str = "*") -> list[str]:
    """Files directly in `folder` whose names match `pattern` (fnmatch), sorted; [] when the folder is absent."""
    folder = os.fspath(folder)
    if is_local(folder):
        return sorted(str(p) for p in Path(folder).glob(pattern) if p.is_file())
    found = FileSystems.match([join(folder, pattern)])[0].metadata_list
    return sorted(m.path for m in found if "/" not in m.path[len(folder.rstrip("/")) + 1 :])


def walk_files(folder: PathLike) -> list[str]:
    """Every file under `folder`, recursively, sorted; [] when the folder is absent."""
    folder = os.fspath(folder)
    if is_local(folder):
        return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
    return _under(folder)


def relative(path: str, root: PathLike) -> str:
    """`path` relative to `root`, with "/" separators, for a path found under `root` by walk_files or list_files."""
    root = os.fspath(root)
    if is_local(root):
        return Path(path).relative_to(root).as_posix()
    return path[len(root.rstrip("/")) + 1 :]


def resolve(path: PathLike) -> str:
    """A local path made absolute (symlinks resolved); a remote one as written, less a trailing "/"."""
    path = os.fspath(path)
    return str(Path(path).resolve()) if is_local(path) else path.rstrip("/")


def mkdirs(path: PathLike) -> None:
    """Make a local folder and its parents; nothing on an object store, which makes them with the files."""
    if is_local(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def remove(path: PathLike) -> bool:
    """Delete the file at `path` if there is one; whether there was."""
    path = os.fspath(path)
    if is_local(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    if not FileSystems.exists(path):
        return False
    FileSystems.delete([path])
    return True


def remove_tree(path: PathLike) -> None:
    """Delete a folder and everything under it; nothing happens when it is absent."""
    path = os.fspath(path)
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = _under(path)
    if files:
        FileSystems.delete(files)


def rename(src: PathLike, dst: PathLike) -> None:
    """Move `src` to `dst`, replacing what is there (an object store copies, then deletes)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_local(src) and is_local(dst):
        os.replace(src, dst)
    else:
        FileSystems.rename([src], [dst])


def fsync_dir(directory: PathLike) -> None:
    """Make a rename in a local folder durable (without this a power loss can forget a file we reported written).
    Object stores commit a write when it closes, so there is nothing to do for them."""
    if not is_local(directory):
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(final: str) -> str:
    parent, name = split(final)
    return join(parent, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def remove_stale_temps(final: PathLike) -> None:
    """Delete temp files a killed writer left for `final`.

    Two live attempts at one file (a Beam speculative retry) can race here; the loser's rename then fails and Beam
    retries it, and since our files are deterministic the one that survives is the same either way.
    """
    parent, name = split(final)
    for stale in list_files(parent, f".{name}.*{TMP_SUFFIX}"):
        remove(stale)


@contextmanager
def atomic_write(final: PathLike) -> Iterator[BinaryIO]:
    """Write under a hidden name unique to this writer, then rename: `final` is whole or absent.

    Local files are fsynced, and so is their folder after the rename; remote ones are committed on close.
    """
    final = os.fspath(final)
    tmp = _temp_name(final)
    local = is_local(final)
    try:
        if local:
            with open(tmp, "xb") as raw:
                yield raw
                raw.flush()
                os.fsync(raw.fileno())
        else:
            with FileSystems.create(tmp, compression_type=_RAW) as raw:
                yield raw
        rename(tmp, final)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(dirname(final))


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Put a copy of `src` at `dst`, atomically; a local pair is hard-linked where it can be (our writers replace
    files by rename, never rewrite them in place, so a link is as safe as a copy and costs nothing)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_local(src) and is_local(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        tmp = dst + ".link" + TMP_SUFFIX
        Path(tmp).unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return
    mkdirs(dirname(dst))
    with open_read(src) as f, atomic_write(dst) as out:
        shutil.copyfileobj(f, out, _COPY_CHUNK)


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    path = os.fspath(path)
    if is_local(path):
        return pq.read_table(path, columns=columns)
    with open_read(path) as f:
        return pq.read_table(f, columns=columns)


def parquet_schema(path: PathLike) -> pa.Schema:
    path = os.fspath(path)
    if is_local(path):
        return pq.read_schema(path)
    with open_read(path) as f:
        return pq.read_schema(f)


def parquet_rows(path: PathLike) -> int:
    """Rows of a Parquet file, from its footer."""
    path = os.fspath(path)
    if is_local(path):
        return pq.ParquetFile(path).metadata.num_rows
    with open_read(path) as f:
        return pq.ParquetFile(f).metadata.num_rows
