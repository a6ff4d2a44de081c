"""Schema version of everything wit-builder writes, and the check readers make before trusting a file."""

SCHEMA_VERSION = "1.2"
# 1.2: samples gained clip_score, sem_cluster and sem_group (written by `wit filter`); nothing else changed.
# 1.1: samples gained colour_sig, and phash became the zoom-averaged pHash (pipeline.fetch.image.phash). A phash
# written under 1.0 was computed another way: comparing it with ours says nothing, so readers set it aside.
PHASH_SINCE = (1, 1)


class SchemaVersionError(ValueError):
    """A file was written under a schema major version this code does not understand."""


def check_schema_version(version: object, what: str = "dataset") -> str:
    """Return `version` if its major part is ours; raise SchemaVersionError with a clear message otherwise.

    Minor versions only add optional fields (1.1 also redefined phash: see PHASH_SINCE), so any minor of our major
    is readable.
    """
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise SchemaVersionError(f"{what}: missing or malformed schema_version {version!r}")
    ours = SCHEMA_VERSION.split(".")[0]
    if version.split(".")[0] != ours:
        raise SchemaVersionError(
            f"{what}: schema_version {version} is not supported by this wit-builder "
            f"(it reads major version {ours}); upgrade wit-builder or rebuild the dataset"
        )
    return version


def phash_comparable(version: str | None) -> bool:
    """Whether phash values written under schema `version` (None: not ours, so no phash) are computed as ours are."""
    parts = (version or "").split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return False
    return (int(parts[0]), int(parts[1])) >= PHASH_SINCE
