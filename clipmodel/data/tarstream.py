"""Streaming WebDataset tar reading for training: safe members, samples grouped by key, problems counted, not raised.

A small ustar/pax header parser instead of `tarfile`: it lets a reader that owns only every k-th sample of a shard
seek past the others' bytes without reading them, and it costs a fraction of `tarfile`'s per-member Python work.
The safety rules are the shard contract's (as pipeline/shard_reader.py applies them): members that are not regular
files, names that could escape the shard, keys outside [A-Za-z0-9_-]+ and oversized members are refused and counted.
"""

import logging
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from schemas import keys, reasons

log = logging.getLogger(__name__)

# Why a reader skipped something (the same codes pipeline/shard_reader.py reports, where it has them).
UNREADABLE_SHARD = "unreadable_shard"  # could not be opened: missing, no permission, remote error
CORRUPT_SHARD = "corrupt_shard"  # truncated or garbage from some point on; the rest of the shard is skipped
UNSAFE_MEMBER = keys.UNSAFE_MEMBER  # not a regular file, a name that could escape the shard, or oversized
INVALID_KEY = reasons.INVALID_KEY
DUPLICATE_KEY = "duplicate_key"  # a key met again after other keys in one shard
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"  # no .txt member, and no caption in a readable .json member
BAD_METADATA = "bad_metadata"  # a .json member that is needed and is not a JSON object
CORRUPT_IMAGE = "corrupt_image"  # the image member does not decode
REPEATED = "repeated"  # not an error: a sample read again to fill an equalized epoch (see loader.py)
REASONS = (
    UNREADABLE_SHARD,
    CORRUPT_SHARD,
    UNSAFE_MEMBER,
    INVALID_KEY,
    DUPLICATE_KEY,
    MISSING_IMAGE,
    MISSING_CAPTION,
    BAD_METADATA,
    CORRUPT_IMAGE,
    REPEATED,
)
SAMPLES = "samples"  # the counter of samples that went into batches

BLOCK = 512
MAX_MEMBER_BYTES = keys.MAX_MEMBER_BYTES  # a module name, so a test can lower it
_REGULAR = (b"0", b"\0", b"7")  # tarfile's isreg(): regular, old-style regular, contiguous
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_MAX_HEADER_DATA = 1 << 20  # a pax or long-name record longer than this is corruption, not a name
# Reads are one member at a time (tens of KB): a buffer of several members keeps syscalls and seeks cheap.
_LOCAL_BUFFER = 1 << 18
_REMOTE_BLOCK = 8 << 20  # fsspec fetches remote files in blocks this big (fewer round trips)


class Counters:
    """Counts by reason (REASONS, plus SAMPLES), over a flat int64 buffer so a worker's row can live in shared memory.

    `counts` is any mutable sequence of len(REASONS) + 1 ints; the default is a private list.
    """

    FIELDS = (SAMPLES, *REASONS)

    def __init__(self, counts=None):
        self.counts = counts if counts is not None else [0] * len(self.FIELDS)
        self._index = {name: i for i, name in enumerate(self.FIELDS)}

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[self._index[reason]] += n

    def __getitem__(self, reason: str) -> int:
        return int(self.counts[self._index[reason]])

    def as_dict(self) -> dict[str, int]:
        """Nonzero counts by name: what a trainer logs."""
        return {name: int(n) for name, n in zip(self.FIELDS, self.counts, strict=True) if n}

    @property
    def errors(self) -> int:
        return sum(self[r] for r in REASONS if r != REPEATED)

    @classmethod
    def total(cls, many: "list[Counters]") -> "Counters":
        out = cls()
        for c in many:
            for i, n in enumerate(c.counts):
                out.counts[i] += int(n)
        return out


class RawSample(NamedTuple):
    """One sample as stored: its key, its members' bytes by extension, and its index among the shard's samples."""

    key: str
    members: dict[str, bytes]
    index: int


class _Header(NamedTuple):
    name: str
    size: int
    kind: bytes


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _parse_header(block: bytes) -> _Header:
    """Name, size and type flag of one header block; ValueError for a block that is not a tar header."""
    stored = _number(block[148:156])
    if stored != sum(block[:148]) + sum(block[156:]) + 8 * ord(" "):
        raise ValueError("bad tar header checksum")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _Header(name.decode("utf-8", "surrogateescape"), _number(block[124:136]), block[156:157])


def _pax_records(data: bytes) -> dict[str, str]:
    """`length key=value\\n` records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("bad pax record length")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"tar ends inside a member ({len(data)} of {n} bytes)")
    return data


def _skip(f: BinaryIO, n: int) -> None:
    """Move past n bytes: a seek where the file can (its buffer often already holds them), else read them."""
    if n <= 0:
        return
    try:
        f.seek(n, 1)
        return
    except (OSError, ValueError, AttributeError):
        pass  # not seekable (an HTTP or pipe stream through fsspec): read through the bytes instead
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError("tar ends inside a member")
        n -= len(chunk)


def _padded(size: int) -> int:
    return -size % BLOCK


def member_problem(name: str, kind: bytes, size: int) -> tuple[str, str] | None:
    """(reason, detail) if a member must be refused under the shard contract (schemas.keys), else None."""
    return keys.member_problem(name, kind in _REGULAR, kind, size, MAX_MEMBER_BYTES)


def iter_headers(f: BinaryIO) -> Iterator[_Header]:
    """Headers of the file members in order, pax and GNU long names applied; the caller reads or skips each body.

    The body (size bytes) must be consumed by the caller before the next header is asked for; padding is skipped
    here. Ends at the end-of-archive block; raises ValueError or EOFError on corruption or truncation.
    """
    pending: dict[str, str] = {}
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            # Every tar writer ends with zero blocks: a file that stops without them was cut short, even at a
            # member boundary (tarfile's stream mode would take that for a clean end).
            raise EOFError("tar ends without its end-of-archive blocks" if not block else "tar ends inside a header")
        if not block.strip(b"\0"):
            return
        header = _parse_header(block)
        if header.kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            if header.size > _MAX_HEADER_DATA:
                raise ValueError(f"a {header.size}-byte extended header")
            data = _read_exact(f, header.size)
            _skip(f, _padded(header.size))
            if header.kind == _PAX:
                pending.update(_pax_records(data))
            elif header.kind == _GNU_LONGNAME:
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if pending:
            size = int(pending["size"]) if "size" in pending else header.size
            header = _Header(pending.get("path", header.name), size, header.kind)
            pending = {}
        yield header
        _skip(f, _padded(header.size))


def iter_samples(
    f: BinaryIO, counters: Counters, label: str = "", part: int = 0, parts: int = 1
) -> Iterator[RawSample]:
    """Samples of one tar stream, members grouped by key as WebDataset does; only every `parts`-th one is read.

    Samples are numbered in tar order (duplicates aside) and this reader reads the bodies of those whose index % parts
    == part and seeks past the rest, so `parts` readers of one shard share it with no overlap and no gap. Problems
    that follow from the shard's bytes are counted once, by the reader of part 0; I/O errors by whoever meets them.
    A corrupt or truncated shard ends the stream where the damage is: the members read whole before it still form
    their sample (as in pipeline/shard_reader.py), so the last one may lack members; nothing raises.
    """
    owner_of_shard = part == 0
    key, members, index, own, seen = None, {}, -1, False, set()

    def refuse(reason: str, detail: str) -> None:
        if owner_of_shard:
            counters.add(reason)
            log.debug("%s: %s: %s", label, reason, detail)

    try:
        for header in iter_headers(f):
            problem = member_problem(header.name, header.kind, header.size)
            if problem is not None:
                refuse(*problem)
                _skip(f, header.size)
                continue
            stem, _, ext = header.name.partition(".")
            if stem != key:
                if own and members:
                    yield RawSample(key, members, index)
                key, members, own = stem, {}, False
                if stem in seen:  # the whole group is skipped, counted once
                    refuse(DUPLICATE_KEY, f"{stem}: met again after other keys")
                else:
                    seen.add(stem)
                    index += 1
                    own = index % parts == part
            if own:
                members[ext] = _read_exact(f, header.size)
            else:
                _skip(f, header.size)
    except (ValueError, EOFError) as e:
        if owner_of_shard:
            counters.add(CORRUPT_SHARD)
            log.warning("%s: corrupt shard, the rest is skipped: %s", label, e)
    except Exception as e:  # any storage backend's read error: one shard must not stop training
        counters.add(CORRUPT_SHARD)
        log.warning("%s: read failed, the rest of the shard is skipped: %s: %s", label, type(e).__name__, e)
    if own and members:
        yield RawSample(key, members, index)


def open_shard(url: str) -> BinaryIO:
    """A readable, seekable binary file for a local path or any fsspec URL (file://, s3://, gs://, memory://, ...)."""
    if "://" not in url:
        return open(url, "rb", buffering=_LOCAL_BUFFER)  # noqa: SIM115 - the caller closes it
    import fsspec  # only URLs need it; remote protocols also need their backend (s3fs, gcsfs) installed

    return fsspec.open(url, "rb", block_size=_REMOTE_BLOCK).open()


def read_shard(url: str, counters: Counters, part: int = 0, parts: int = 1) -> Iterator[RawSample]:
    """`iter_samples` of the shard at `url`; a shard that cannot be opened is counted (UNREADABLE_SHARD) and skipped."""
    try:
        f = open_shard(url)
    except Exception as e:  # missing file, no permission, or any backend's network error
        counters.add(UNREADABLE_SHARD)
        log.warning("%s: cannot open, skipped: %s: %s", url, type(e).__name__, e)
        return
    with f:
        yield from iter_samples(f, counters, url, part, parts)
