"""Schema version of everything wit-builder writes, and the check readers make before trusting a file."""

SCHEMA_VERSION = "1.0"


class SchemaVersionError(ValueError):
    """A file was written under a schema major version this code does not understand."""


def check_schema_version(version: object, what: str = "dataset") -> str:
    """Return `version` if its major part is ours; raise SchemaVersionError with a clear message otherwise.

    Minor versions only add optional fields, so any minor of our major is readable.
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
