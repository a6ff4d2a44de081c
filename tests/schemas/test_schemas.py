"""Schemas: Parquet round-trips, key rules, reason registry, version refusal, manifest JSON."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import (
    CANDIDATE_SCHEMA,
    PAGE_SCHEMA,
    REJECTION_SCHEMA,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    DatasetManifest,
    FileEntry,
    SchemaVersionError,
    ShardEntry,
    check_schema_version,
    embeddings_schema,
    fields,
    make_key,
    reasons,
    shard_name,
    validate_key,
)
from schemas.records import conform
from schemas.version import phash_comparable


def _sample_row(key: str) -> dict:
    return {
        fields.KEY: key,
        fields.URL: "http://example.com/a.jpg",
        fields.CAPTION: "a red circle",
        fields.SOURCE: "urls:test.parquet",
        fields.SOURCE_ROW: 7,
        fields.STATUS: fields.STATUS_SUCCESS,
        fields.WIDTH: 256,
        fields.HEIGHT: 192,
        fields.SHA256: "ab" * 32,
        fields.PHASH: 2**64 - 1,  # the top bit set: must survive as unsigned
        fields.LANG: "en",
        fields.LANG_SCORE: 0.98,
        fields.MATCHED_ENTRIES: ["red", "circle"],
    }


@pytest.mark.parametrize(
    "schema", [CANDIDATE_SCHEMA, SAMPLE_SCHEMA, REJECTION_SCHEMA, PAGE_SCHEMA, embeddings_schema(4)]
)
def test_schema_parquet_round_trip(tmp_path, schema):
    rows = []
    for i in range(3):
        row = {name: None for name in schema.names}
        for name in schema.names:
            typ = schema.field(name).type
            if pa.types.is_string(typ):
                row[name] = f"{name}-{i}"
            elif pa.types.is_integer(typ):
                row[name] = i + 1
            elif pa.types.is_floating(typ):
                row[name] = 0.5
            elif pa.types.is_fixed_size_list(typ):
                row[name] = [float(i)] * typ.list_size
            elif pa.types.is_list(typ):
                row[name] = ["a", "b"]
        rows.append(row)
    table = conform(rows, schema)
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.equals(schema, check_metadata=False)
    assert back.to_pylist() == table.to_pylist()
    assert back.schema.metadata[b"wit_schema_version"] == SCHEMA_VERSION.encode()


def test_sample_row_keeps_unsigned_phash_and_lists(tmp_path):
    table = conform([_sample_row("abc")], SAMPLE_SCHEMA)
    pq.write_table(table, tmp_path / "s.parquet")
    row = pq.read_table(tmp_path / "s.parquet").to_pylist()[0]
    assert row[fields.PHASH] == 2**64 - 1
    assert row[fields.MATCHED_ENTRIES] == ["red", "circle"]
    assert row[fields.REASON] is None


def test_conform_rejects_unknown_fields():
    with pytest.raises(ValueError, match="captoin"):
        conform([{fields.KEY: "a", fields.URL: "u", "captoin": "typo"}], CANDIDATE_SCHEMA)


def test_make_key_is_deterministic_and_safe():
    k = make_key("urls:a.parquet", 3, "http://x/y.jpg")
    assert k == make_key("urls:a.parquet", 3, "http://x/y.jpg")
    assert k != make_key("urls:a.parquet", 4, "http://x/y.jpg")
    assert k != make_key("urls:b.parquet", 3, "http://x/y.jpg")
    assert validate_key(k) == k and len(k) == 20


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a.b", "/etc", "k" * 65, None, "a b", "ü"])
def test_validate_key_refuses_unsafe(bad):
    with pytest.raises(ValueError, match="invalid sample key"):
        validate_key(bad)


def test_shard_name():
    assert shard_name(0) == "00000"
    assert shard_name(42) == "00042"
    assert shard_name(123456) == "123456"
    with pytest.raises(ValueError):
        shard_name(-1)


def test_reason_codes_are_unique_and_staged():
    assert len(reasons.REASONS) >= 30
    for code, reason in reasons.REASONS.items():
        assert reason.code == code
        assert reason.stage in reasons.STAGES
    assert reasons.stage_of(reasons.TOO_MANY_PIXELS) == reasons.IMAGE
    assert reasons.stage_of(reasons.ROBOTS_DISALLOWED) == reasons.FETCH
    assert not reasons.is_known("no_such_code")


def test_schema_version_check():
    assert check_schema_version(SCHEMA_VERSION) == SCHEMA_VERSION
    assert check_schema_version("1.7") == "1.7"  # a newer minor only adds optional fields
    with pytest.raises(SchemaVersionError, match="schema_version 2.0 is not supported"):
        check_schema_version("2.0")
    with pytest.raises(SchemaVersionError, match="malformed"):
        check_schema_version(None)


def test_phash_is_comparable_from_schema_1_1_on():
    # 1.1 redefined phash: a 1.0 file's values are readable, but matching them against ours would mean nothing.
    assert phash_comparable(SCHEMA_VERSION) and phash_comparable("1.1") and phash_comparable("1.12")
    assert not any(phash_comparable(v) for v in ("1.0", None, "1", "x.y"))


def test_sample_rows_from_before_colour_sig_read_as_null(tmp_path):
    old = SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index(fields.COLOUR_SIG))
    pq.write_table(conform([_sample_row("abc")], old), tmp_path / "old.parquet")
    back = pq.read_table(tmp_path / "old.parquet", schema=SAMPLE_SCHEMA).to_pylist()[0]
    assert back[fields.COLOUR_SIG] is None and back[fields.PHASH] == 2**64 - 1


def _manifest() -> DatasetManifest:
    tar = FileEntry("shards/00000.tar", 10240, "a" * 64)
    par = FileEntry("shards/00000.parquet", 999, "b" * 64)
    return DatasetManifest(
        shards=(ShardEntry("00000", 3, tar, par),),
        rejected=(FileEntry("rejected/fetch-00000.parquet", 500, "c" * 64),),
        counts={"fetch": {"http_4xx": 2}, "shards": {"kept": 3}},
        config={"samples_per_shard": 10},
        code_version="0.1.0",
    )


def test_manifest_json_round_trip_and_determinism():
    m = _manifest()
    text = m.to_json()
    assert text == _manifest().to_json()
    back = DatasetManifest.from_json(text)
    assert back == m
    assert back.rows == 3
    assert [f.path for f in back.files()] == [
        "shards/00000.tar",
        "shards/00000.parquet",
        "rejected/fetch-00000.parquet",
    ]


def test_manifest_refuses_future_major_and_garbage():
    text = _manifest().to_json().replace(f'"schema_version": "{SCHEMA_VERSION}"', '"schema_version": "9.0"')
    with pytest.raises(SchemaVersionError, match="9.0"):
        DatasetManifest.from_json(text)
    with pytest.raises(ValueError, match="not valid JSON"):
        DatasetManifest.from_json("{nope")
    with pytest.raises(ValueError, match="not a wit-builder dataset manifest"):
        DatasetManifest.from_json('{"shards": []}')


def test_embeddings_schema_dim():
    s = embeddings_schema(512)
    assert s.field(fields.EMBEDDING).type.list_size == 512
    with pytest.raises(ValueError):
        embeddings_schema(0)
