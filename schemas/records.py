"""Arrow schemas of the row types: candidate, sample, rejection and embeddings."""

import pyarrow as pa

from schemas import fields as f
from schemas.version import SCHEMA_VERSION

# Parquet/Arrow schema metadata key holding the schema version: readers tell our files from others' by it.
SCHEMA_VERSION_KEY = b"wit_schema_version"
_META = {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()}

_CANDIDATE_FIELDS = [
    pa.field(f.KEY, pa.string(), nullable=False),
    pa.field(f.URL, pa.string(), nullable=False),
    pa.field(f.CAPTION, pa.string()),
    pa.field(f.ALT, pa.string()),
    pa.field(f.TITLE, pa.string()),
    pa.field(f.FIGCAPTION, pa.string()),
    pa.field(f.PAGE_URL, pa.string()),
    pa.field(f.PAGE_TITLE, pa.string()),
    pa.field(f.PAGE_LANG, pa.string()),
    pa.field(f.SOURCE, pa.string()),
    pa.field(f.SOURCE_ROW, pa.int64()),
]

CANDIDATE_SCHEMA = pa.schema(_CANDIDATE_FIELDS, metadata=_META)

SAMPLE_SCHEMA = pa.schema(
    _CANDIDATE_FIELDS
    + [
        pa.field(f.STATUS, pa.string(), nullable=False),
        pa.field(f.REASON, pa.string()),
        pa.field(f.HTTP_STATUS, pa.int32()),
        pa.field(f.WIDTH, pa.int32()),
        pa.field(f.HEIGHT, pa.int32()),
        pa.field(f.ORIGINAL_WIDTH, pa.int32()),
        pa.field(f.ORIGINAL_HEIGHT, pa.int32()),
        pa.field(f.IMAGE_FORMAT, pa.string()),
        pa.field(f.BYTES, pa.int64()),
        pa.field(f.SHA256, pa.string()),
        pa.field(f.PHASH, pa.uint64()),
        pa.field(f.COLOUR_SIG, pa.int64()),  # null in datasets written before schema 1.1
        pa.field(f.LANG, pa.string()),
        pa.field(f.LANG_SCORE, pa.float32()),
        pa.field(f.MATCHED_ENTRIES, pa.list_(pa.string())),
        pa.field(f.DUP_GROUP, pa.string()),
        # Set by `wit filter` (schema 1.2); null in datasets it did not write.
        pa.field(f.CLIP_SCORE, pa.float32()),
        pa.field(f.SEM_CLUSTER, pa.int32()),
        pa.field(f.SEM_GROUP, pa.string()),
    ],
    metadata=_META,
)

REJECTION_SCHEMA = pa.schema(
    [
        pa.field(f.KEY, pa.string(), nullable=False),
        pa.field(f.URL, pa.string()),
        pa.field(f.CAPTION, pa.string()),
        pa.field(f.PAGE_URL, pa.string()),
        pa.field(f.SOURCE, pa.string()),
        pa.field(f.SOURCE_ROW, pa.int64()),
        pa.field(f.STAGE, pa.string(), nullable=False),
        pa.field(f.REASON, pa.string(), nullable=False),
        pa.field(f.DETAIL, pa.string()),
    ],
    metadata=_META,
)


PAGE_SCHEMA = pa.schema(
    [
        pa.field(f.PAGE_URL, pa.string(), nullable=False),
        pa.field(f.DEPTH, pa.int32(), nullable=False),
        pa.field(f.STATUS, pa.string(), nullable=False),  # "success" or a reason code
        pa.field(f.DETAIL, pa.string()),
        pa.field(f.IMAGES, pa.int32()),
        pa.field(f.LINKS, pa.int32()),
    ],
    metadata=_META,
)


# The WIT/MetaCLIP entry-count curve of a build (balance_counts.parquet beside the manifest), for the stats report.
BALANCE_COUNTS_SCHEMA = pa.schema(
    [
        pa.field(f.ENTRY, pa.string(), nullable=False),
        pa.field(f.COUNT_BEFORE, pa.int64(), nullable=False),
        pa.field(f.COUNT_AFTER, pa.int64(), nullable=False),
    ],
    metadata=_META,
)


# The row metadata of an embeddings folder (metadata/metadata_NNNNN.parquet), row i describing row i of the shard's
# img_emb/text_emb matrices: the layout clip-retrieval writes, so its tools and autofaiss read ours.
EMBEDDING_METADATA_SCHEMA = pa.schema(
    [
        pa.field(f.KEY, pa.string(), nullable=False),
        pa.field(f.CAPTION, pa.string()),
        pa.field(f.URL, pa.string()),
    ],
    metadata=_META,
)


def embeddings_schema(dim: int) -> pa.Schema:
    """One row per sample key: an L2-normalised embedding of fixed width, and the model that made it."""
    if dim <= 0:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    return pa.schema(
        [
            pa.field(f.KEY, pa.string(), nullable=False),
            pa.field(f.EMBEDDING, pa.list_(pa.float32(), dim), nullable=False),
            pa.field(f.MODEL, pa.string()),
        ],
        metadata={**_META, b"embedding_dim": str(dim).encode()},
    )


def empty_row(schema: pa.Schema) -> dict:
    """A row of `schema` with every field None, to fill in: keeps writers from re-declaring field lists."""
    return {name: None for name in schema.names}


def conform(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from dict rows: unknown keys are an error (typos surface), missing ones are null."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"fields not in schema: {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)
