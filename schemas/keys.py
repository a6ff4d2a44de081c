"""Sample keys and shard names: deterministic, filesystem- and tar-safe."""

import hashlib
import re

from schemas import reasons

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
# ustar member names hold 100 bytes; a key plus ".json" must fit without the PAX extension.
MAX_KEY_LENGTH = 64
KEY_HEX_DIGITS = 20  # 80 bits: collision odds stay negligible at billions of candidates


def make_key(source: str, row: int | str, url: str) -> str:
    """The key of a candidate: a hash of where it came from, never of a worker, bundle or run.

    The same (source, row, url) gives the same key on every run and runner, which is what makes shards
    reproducible and lets later stages and reruns refer back to a candidate.
    """
    digest = hashlib.sha256(f"{source}\x00{row}\x00{url}".encode()).hexdigest()
    return digest[:KEY_HEX_DIGITS]


def validate_key(key: object) -> str:
    """Return `key` if it is safe as a tar member stem and file name; raise ValueError otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key) or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid sample key {key!r}: must match [A-Za-z0-9_-]+ and be at most {MAX_KEY_LENGTH} chars")
    return key


def shard_name(index: int, width: int = 5) -> str:
    """`00042` for shard 42: zero-padded like img2dataset, widening past 10**width shards rather than wrapping."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return str(index).zfill(width)


UNSAFE_MEMBER = "unsafe_member"  # not a regular file, a name that could escape the shard, or oversized
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # no real image is near it; a crafted tar can be


def member_problem(name: str, regular: bool, kind: object, size: int, max_bytes: int = MAX_MEMBER_BYTES):
    """(reason, detail) when a tar member must be refused under the shard contract, else None: the one rule both
    shard readers (pipeline's tarfile-based one, clipmodel's streaming one) apply. `kind` is only shown."""
    if not regular:
        return UNSAFE_MEMBER, f"{name!r} is not a regular file (tar type {kind!r})"
    if name.startswith("/") or "/" in name or "\\" in name or ".." in name:
        return UNSAFE_MEMBER, f"{name!r} could escape the shard"
    stem, _, ext = name.partition(".")
    if not ext:
        return UNSAFE_MEMBER, f"{name!r} has no extension"
    try:
        validate_key(stem)
    except ValueError as e:
        return reasons.INVALID_KEY, str(e)
    if size > max_bytes:
        return UNSAFE_MEMBER, f"{name!r} is {size} bytes, over the {max_bytes} limit"
    return None
