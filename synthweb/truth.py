"""The ground truth of a synthetic web: one row per URL (Arrow schema, writer, reader) and the eval-set label files."""

from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

TRUTH_FILE = "truth.parquet"
SITE_FILE = "site.json"  # routes and seeds: what the server needs, nothing more
CLASSES_FILE = "classes.json"
EVAL_DIR = "eval"
EVAL_SHIFT_DIR = "eval_shift"
LABELS_FILE = "labels.parquet"

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # "page-0003", "img-0042", "robots-0"
        pa.field("host", pa.int32(), nullable=False),  # index into ServedWeb.base_urls
        pa.field("path", pa.string(), nullable=False),  # absolute path on that host, e.g. "/img/3fa2.jpg"
        pa.field("kind", pa.string(), nullable=False),  # page | image | robots
        pa.field("page", pa.string()),  # id of the page whose HTML references this image (None: not referenced)
        pa.field("ref", pa.string()),  # img | figure | srcset | redirect (reached only through a redirect)
        pa.field("label", pa.string()),  # "<colour> <shape>" of the picture the bytes hold, if any
        pa.field("colour", pa.string()),
        pa.field("shape", pa.string()),
        pa.field("texture", pa.string()),
        pa.field("background", pa.string()),
        pa.field("size", pa.string()),  # small | medium | large: the object within the picture
        pa.field("format", pa.string()),  # jpg | png | webp | gif: what the bytes are, whatever the URL says
        pa.field("width", pa.int32()),  # as the image header declares it
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),  # length of the body served (None for pages: it depends on the ports)
        pa.field("sha256", pa.string()),
        pa.field("content_type", pa.string()),  # Content-Type header of the final response
        pa.field("status", pa.int32()),  # HTTP status of the first response
        pa.field("caption", pa.string()),  # alt text, entities decoded ("" when empty or absent)
        pa.field("caption_kind", pa.string()),  # good | non_english | boilerplate | empty | mismatch
        pa.field("caption_label", pa.string()),  # the class the caption describes (differs from label: mismatch)
        pa.field("has_alt", pa.bool_()),  # False: no alt attribute at all
        pa.field("title", pa.string()),  # <img title> for images, <title> for pages
        pa.field("lang", pa.string()),  # caption language for images, <html lang> for pages
        pa.field("figcaption", pa.string()),
        pa.field("srcset_group", pa.string()),  # the img whose srcset lists this URL
        pa.field("srcset_width", pa.int32()),  # its "NNNw" descriptor
        pa.field("srcset_best", pa.bool_()),  # the largest candidate of its srcset
        pa.field("dup_group", pa.string()),  # same bytes as the other URLs of the group
        pa.field("near_dup_group", pa.string()),  # same picture resized, cropped or re-encoded
        pa.field("eval_leak", pa.string()),  # path (under the web dir) of the eval image this is a near-copy of
        pa.field("fault", pa.string(), nullable=False),  # a key of synthweb.faults.FAULTS
        pa.field("expected", pa.string(), nullable=False),  # "ok" or the schemas.reasons code a fetch should reach
        pa.field("target", pa.string()),  # id of the URL a redirect points to
        pa.field("links", pa.list_(pa.string())),  # pages: ids of the pages it links to
        pa.field("seed", pa.bool_()),  # pages: listed in seeds.txt
    ]
)

LABELS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # relative to the folder holding labels.parquet
        pa.field("label", pa.string(), nullable=False),
        pa.field("colour", pa.string(), nullable=False),
        pa.field("shape", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train (class seen on the web) | held_out (never seen)
        pa.field("shift", pa.string()),  # None for eval/, else background | texture | sketch
        pa.field("texture", pa.string()),
        pa.field("background", pa.string()),
        pa.field("size", pa.string()),
        pa.field("style", pa.string()),  # photo | sketch
    ]
)


def empty_truth_row() -> dict:
    return dict.fromkeys(TRUTH_SCHEMA.names)


def write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path)


def load_truth(web_dir: str | Path) -> list[dict]:
    """The ground-truth rows of a generated web (one per URL, see TRUTH_SCHEMA); paths only, no ports."""
    return pq.read_table(Path(web_dir) / TRUTH_FILE, schema=TRUTH_SCHEMA).to_pylist()


def picture_of(url: str, by_url: dict[str, dict], by_id: dict[str, dict]) -> dict | None:
    """The truth row of the picture a served URL shows (rows keyed by served url and by id), following a redirect to
    its target; None for a URL the web does not know."""
    row = by_url.get(url)
    while row is not None and row.get("target"):
        row = by_id.get(row["target"])
    return row


def pictured_labels(web_dir: str | Path, urls: list[str | None]) -> list[str | None]:
    """The class each URL's picture shows (following redirects), matched by the URL's path since the ports change
    with each serve; None for a URL the web does not know, a path two hosts share, or bytes that are no picture."""
    rows = load_truth(web_dir)
    by_id = {r["id"]: r for r in rows}
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    out = []
    for url in urls:
        found = by_path.get(urlsplit(url).path, []) if url else []
        row = found[0] if len(found) == 1 else None
        while row is not None and row.get("target"):
            row = by_id.get(row["target"])
        out.append(row["label"] or None if row is not None else None)
    return out


def same_text(a: str | None, b: str | None) -> bool:
    """Equal but for whitespace and case: a candidate's caption is the alt text the truth recorded (extraction
    collapses whitespace)."""
    return " ".join((a or "").split()).casefold() == " ".join((b or "").split()).casefold()


def load_eval(web_dir: str | Path, shift: str | None = None) -> list[dict]:
    """Rows of eval/labels.parquet (shift None) or eval_shift/<shift>/labels.parquet, with `path` made absolute."""
    folder = Path(web_dir) / (EVAL_DIR if shift is None else f"{EVAL_SHIFT_DIR}/{shift}")
    rows = pq.read_table(folder / LABELS_FILE, schema=LABELS_SCHEMA).to_pylist()
    for row in rows:
        row["path"] = str(folder / row["path"])
    return rows
