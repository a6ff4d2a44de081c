"""The one source of truth for wit-builder's data: field names, reason codes, Arrow schemas, keys, manifests."""

from schemas import fields, reasons
from schemas.keys import KEY_PATTERN, make_key, shard_name, validate_key
from schemas.manifest import DatasetManifest, FileEntry, ShardEntry
from schemas.records import (
    CANDIDATE_SCHEMA,
    PAGE_SCHEMA,
    REJECTION_SCHEMA,
    SAMPLE_SCHEMA,
    embeddings_schema,
    empty_row,
)
from schemas.version import SCHEMA_VERSION, SchemaVersionError, check_schema_version

__all__ = [
    "CANDIDATE_SCHEMA",
    "KEY_PATTERN",
    "PAGE_SCHEMA",
    "REJECTION_SCHEMA",
    "SAMPLE_SCHEMA",
    "SCHEMA_VERSION",
    "DatasetManifest",
    "FileEntry",
    "SchemaVersionError",
    "ShardEntry",
    "check_schema_version",
    "embeddings_schema",
    "empty_row",
    "fields",
    "make_key",
    "reasons",
    "shard_name",
    "validate_key",
]
