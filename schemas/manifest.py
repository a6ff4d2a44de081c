"""The shard manifest entry and the dataset manifest (`manifest.json`): what a dataset holds and proves."""

import json
from dataclasses import asdict, dataclass, field

from schemas.version import SCHEMA_VERSION, check_schema_version

MANIFEST_NAME = "manifest.json"
SIZES_NAME = "sizes.json"
SHARDS_DIR = "shards"
REJECTED_DIR = "rejected"
BALANCE_COUNTS_NAME = "balance_counts.parquet"  # beside the manifest when a build balanced its queries
FORMAT = "wit-builder-dataset"


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset, by path relative to the dataset root, with its size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardEntry:
    """One shard: a WebDataset tar and its same-stem Parquet, holding `rows` samples in the same order."""

    name: str  # the stem, e.g. "00000"
    rows: int
    tar: FileEntry
    parquet: FileEntry

    @classmethod
    def from_dict(cls, d: dict) -> "ShardEntry":
        return cls(name=d["name"], rows=int(d["rows"]), tar=FileEntry(**d["tar"]), parquet=FileEntry(**d["parquet"]))


@dataclass(frozen=True)
class DatasetManifest:
    """Written last and atomically: a dataset is exactly what its manifest lists, nothing more.

    `counts` is the funnel: stage -> reason (or "kept") -> candidates. No timestamps live here, so the
    same input and config give a byte-identical manifest too.
    """

    shards: tuple[ShardEntry, ...]
    rejected: tuple[FileEntry, ...] = ()
    counts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    code_version: str = ""
    schema_version: str = SCHEMA_VERSION
    format: str = FORMAT

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def files(self) -> list[FileEntry]:
        out: list[FileEntry] = []
        for s in self.shards:
            out += [s.tar, s.parquet]
        return out + list(self.rejected)

    def to_json(self) -> str:
        d = asdict(self)
        d["rows"] = self.rows
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, what: str = MANIFEST_NAME) -> "DatasetManifest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{what}: not a wit-builder dataset manifest")
        check_schema_version(d.get("schema_version"), what)
        return cls(
            shards=tuple(ShardEntry.from_dict(s) for s in d.get("shards", [])),
            rejected=tuple(FileEntry(**r) for r in d.get("rejected", [])),
            counts=d.get("counts", {}),
            config=d.get("config", {}),
            code_version=d.get("code_version", ""),
            schema_version=d["schema_version"],
        )
