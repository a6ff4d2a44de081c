"""Candidate dedup: URL normalization, survivor choice, url/pair/none modes, exclusion of earlier datasets, Beam."""

import io
import random
from collections import Counter

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from memfs import clear, upload
from PIL import Image

from pipeline.batches import batched
from pipeline.curate.dedup import (
    MODES,
    DedupCandidates,
    DedupConfig,
    ExcludeSeen,
    caption_key,
    dataset_urls,
    dedup_key,
    dedup_pure,
    exclude_seen_pure,
    judge_group,
    normalize_url,
)
from pipeline.shards import DatasetWriter
from schemas import fields, reasons
from schemas.reasons import REJECTED

NORMALIZED = [
    # scheme and host case, default ports, fragments, empty path and query
    ("HTTP://Example.COM/a.jpg", "http://example.com/a.jpg"),
    ("http://example.com/A.JPG", "http://example.com/A.JPG"),  # paths are case-sensitive
    ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
    ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
    ("http://example.com:443/a.jpg", "http://example.com:443/a.jpg"),  # not the default for http
    ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
    ("http://example.com:080/a.jpg", "http://example.com/a.jpg"),
    ("http://example.com:/a.jpg", "http://example.com/a.jpg"),
    ("http://example.com/a.jpg#main", "http://example.com/a.jpg"),
    ("http://example.com/a.jpg?#", "http://example.com/a.jpg"),
    ("http://example.com", "http://example.com/"),
    ("http://example.com?x=1", "http://example.com/?x=1"),
    ("  http://example.com/a.jpg\n", "http://example.com/a.jpg"),
    # tracking parameters go, the others stay in their order
    ("http://e.com/a.jpg?utm_source=tw&utm_medium=social", "http://e.com/a.jpg"),
    ("http://e.com/a.jpg?w=300&fbclid=IwAR0&h=200", "http://e.com/a.jpg?w=300&h=200"),
    ("http://e.com/a.jpg?z=1&a=2", "http://e.com/a.jpg?z=1&a=2"),
    ("http://e.com/a.jpg?UTM_Campaign=x&gclid=1&msclkid=2&_ga=3&igshid=4&mc_cid=5&mc_eid=6", "http://e.com/a.jpg"),
    ("http://e.com/a.jpg?dclid=1&yclid=2&ref_src=twsrc&pk_kwd=3", "http://e.com/a.jpg"),
    ("http://e.com/a.jpg?ref=home&source=feed", "http://e.com/a.jpg?ref=home&source=feed"),  # generic: kept
    ("http://e.com/a.jpg?utm=1&utmost=2", "http://e.com/a.jpg?utm=1&utmost=2"),  # only the utm_ prefix
    ("http://e.com/a.jpg?&&w=1&&", "http://e.com/a.jpg?w=1"),
    ("http://e.com/a.jpg?w=1&w=2", "http://e.com/a.jpg?w=1&w=2"),  # repeats are the server's business
    # percent-encoding: escapes upper-cased, what a client would encode encoded
    ("http://e.com/caf%c3%a9.jpg?q=%2f", "http://e.com/caf%C3%A9.jpg?q=%2F"),
    ("http://e.com/café.jpg", "http://e.com/caf%C3%A9.jpg"),
    ("http://e.com/a b.jpg?q=a b", "http://e.com/a%20b.jpg?q=a%20b"),
    ("http://e.com/a+b.jpg?q=a+b", "http://e.com/a+b.jpg?q=a+b"),  # + is not a space outside forms
    # hosts: IDNA, trailing dot, IPv6, userinfo kept verbatim
    ("http://BÜCHER.de/bild.jpg", "http://xn--bcher-kva.de/bild.jpg"),
    ("http://xn--BCHER-kva.de/bild.jpg", "http://xn--bcher-kva.de/bild.jpg"),
    ("http://straße.de/a.jpg", "http://xn--strae-oqa.de/a.jpg"),  # UTS 46 non-transitional: not strasse.de
    ("http://例え。テスト/a.jpg", "http://xn--r8jz45g.xn--zckzah/a.jpg"),
    ("http://i❤.ws/a.png", "http://xn--i-7iq.ws/a.png"),  # refused by IDNA 2008, resolved by browsers
    ("http://example.com./a.jpg", "http://example.com/a.jpg"),
    ("http://[2001:DB8::1]:80/a.jpg", "http://[2001:db8::1]/a.jpg"),
    ("http://[2001:db8::1]:8080/a.jpg", "http://[2001:db8::1]:8080/a.jpg"),
    ("http://User:PassWord@Example.com/a.jpg", "http://User:PassWord@example.com/a.jpg"),
    ("http://img_cdn.example.com/a.jpg", "http://img_cdn.example.com/a.jpg"),
]

UNCHANGED = [
    "",
    "not a url",
    "//example.com/a.jpg",  # scheme-relative: the source stage resolves or rejects it
    "/a.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "mailto:someone@example.com",
    "http://[::1/a.jpg",
    "http://example.com:99999/a.jpg",
    "http://example.com:8o/a.jpg",
    "http://:80/a.jpg",
    "http:///a.jpg",
    "http://example.com/\ud800.jpg",  # a lone surrogate cannot be encoded
]


@pytest.mark.parametrize(("url", "normal"), NORMALIZED)
def test_normalize_url(url, normal):
    assert normalize_url(url) == normal
    assert normalize_url(normal) == normal  # idempotent


@pytest.mark.parametrize("url", UNCHANGED)
def test_unusable_urls_are_returned_unchanged(url):
    assert normalize_url(url) == url


def test_caption_key():
    assert caption_key("  A  Red\tCIRCLE\n") == "a red circle"
    assert caption_key("Straße") == caption_key("STRASSE") == "strasse"
    assert caption_key(None) == caption_key("") == ""


def _cand(key: str, url: str | None, caption: str | None = "a red circle") -> dict:
    return {fields.KEY: key, fields.URL: url, fields.CAPTION: caption, fields.SOURCE: "test"}


def test_dedup_key():
    c = _cand("k1", "HTTP://E.com/a.jpg#x", " A red  circle")
    assert dedup_key(c, "url") == ("http://e.com/a.jpg",)
    assert dedup_key(c, "pair") == ("http://e.com/a.jpg", "a red circle")
    assert dedup_key(c, "none") == (None, "k1")
    assert dedup_key(_cand("k2", None), "url") == dedup_key(_cand("k2", "  "), "pair") == (None, "k2")


CANDS = [
    _cand("k3", "http://e.com/a.jpg?utm_source=x", "A red circle"),
    _cand("k1", "HTTP://E.COM/a.jpg#top", "a blue square"),
    _cand("k2", "http://e.com:80/a.jpg", "a  RED circle"),
    _cand("k5", "http://e.com/b.jpg", "a red circle"),
    _cand("k4", None, "no url"),
    _cand("k6", None, "no url"),
]


def _rejection(row: dict) -> tuple:
    return row[fields.STAGE], row[fields.REASON], row[fields.DETAIL]


def _verdicts(kept: list[dict], rejected: list[dict]) -> dict[str, tuple]:
    out = {c[fields.KEY]: ("kept",) for c in kept}
    out.update({r[fields.KEY]: _rejection(r) for r in rejected})
    assert len(out) == len(kept) + len(rejected)  # nobody judged twice
    return out


def test_url_mode_keeps_the_smallest_key_whatever_the_order():
    expected = {
        "k1": ("kept",),
        "k2": (reasons.DEDUP, reasons.DUPLICATE_URL, "duplicate of k1"),
        "k3": (reasons.DEDUP, reasons.DUPLICATE_URL, "duplicate of k1"),
        "k4": ("kept",),  # no URL: the source stage's business, not merged with k6
        "k5": ("kept",),
        "k6": ("kept",),
    }
    rng = random.Random(0)
    for _ in range(10):
        order = rng.sample(CANDS, len(CANDS))
        kept, rejected = dedup_pure(order, DedupConfig(by="url"))
        assert _verdicts(kept, rejected) == expected
        assert kept == [c for c in order if c[fields.KEY] in ("k1", "k4", "k5", "k6")]  # input order


def test_pair_mode_needs_url_and_caption_to_match():
    kept, rejected = dedup_pure(CANDS, DedupConfig(by="pair"))
    assert _verdicts(kept, rejected) == {
        "k1": ("kept",),  # other caption
        "k2": ("kept",),
        "k3": (reasons.DEDUP, reasons.DUPLICATE_PAIR, "duplicate of k2"),
        "k4": ("kept",),
        "k5": ("kept",),  # other URL
        "k6": ("kept",),
    }


def test_none_mode_keeps_everything():
    kept, rejected = dedup_pure(CANDS, DedupConfig(by="none"))
    assert kept == CANDS and rejected == []


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="dedup mode"):
        DedupConfig(by="sha256")


def test_identical_rows_keep_exactly_one():
    a, b = _cand("k1", "http://e.com/a.jpg", "x"), _cand("k1", "http://e.com/a.jpg", "y")
    verdicts = list(judge_group([b, dict(a), b, a], reasons.DUPLICATE_URL))
    assert [row is None for _, row in verdicts] == [False, True, False, False]  # the first copy of the smaller row
    kept, rejected = dedup_pure([a, dict(a)], DedupConfig())
    assert kept == [a] and len(rejected) == 1


class _Reread:
    """A re-iterable group that, like a GroupByKey result read from a runner's state, gives new objects each pass."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __iter__(self):
        return (dict(row) for row in self.rows)


def test_survivor_is_found_again_in_a_reread_group():
    rows = [{**_cand(k, "http://e.com/a.jpg"), fields.LANG_SCORE: float("nan")} for k in ("k2", "k1", "k3")]
    verdicts = [
        (c[fields.KEY], row and row[fields.DETAIL]) for c, row in judge_group(_Reread(rows), reasons.DUPLICATE_URL)
    ]
    assert verdicts == [("k2", "duplicate of k1"), ("k1", None), ("k3", "duplicate of k1")]


def _beam_verdicts(out, label: str) -> beam.PCollection:
    return (
        out.kept | f"{label}Kept" >> beam.FlatMap(lambda rows: [(c[fields.KEY], ("kept",)) for c in rows]),
        out[REJECTED] | f"{label}Rejected" >> beam.FlatMap(lambda rows: [(r[fields.KEY], _rejection(r)) for r in rows]),
    ) | f"{label}All" >> beam.Flatten()


def test_dedup_stage_matches_the_plain_loop(tmp_path):
    p = TestPipeline(runner="FnApiRunner")
    cands = p | beam.Create(list(batched(CANDS, 4)))  # a URL's spellings arrive in different batches
    counts = Counter()
    for by in MODES:  # one pipeline for the three modes: each run costs a second or two to start
        kept, rejected = dedup_pure(CANDS, DedupConfig(by=by))
        counts.update({"kept": len(kept)} | Counter(r[fields.REASON] for r in rejected))
        out = cands | f"Dedup_{by}" >> DedupCandidates(
            DedupConfig(by=by), str(tmp_path / by), rows_per_partition=5
        )  # 16 partitions
        assert_that(_beam_verdicts(out, by), equal_to(sorted(_verdicts(kept, rejected).items())), label=f"Check_{by}")
    # Sized from a row count known in advance (Parquet footers): no count of the input, same verdicts.
    hinted = cands | "DedupHinted" >> DedupCandidates(DedupConfig(), str(tmp_path), 1, rows_hint=len(CANDS))
    kept, rejected = dedup_pure(CANDS, DedupConfig())
    counts.update({"kept": len(kept)} | Counter(r[fields.REASON] for r in rejected))
    assert_that(_beam_verdicts(hinted, "hinted"), equal_to(sorted(_verdicts(kept, rejected).items())), label="Hinted")
    result = p.run()
    result.wait_until_finish()
    by_name = Counter()
    for counter in result.metrics().query(MetricsFilter().with_namespace(reasons.DEDUP))["counters"]:
        by_name[counter.key.metric.name] += counter.committed  # one counter per step: the four runs add up
    assert by_name == counts == {"kept": 15 + 4, "duplicate_url": 2 + 2, "duplicate_pair": 1}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def earlier(tmp_path):
    """A small dataset of ours, two shards, holding http://old.test/0.png .. 4.png."""
    path = tmp_path / "earlier"
    image = _png()
    with DatasetWriter(path, samples_per_shard=3) as writer:
        for i in range(5):
            row = {**_cand(f"old{i}", f"http://old.test/{i}.png"), fields.IMAGE_FORMAT: "png"}
            writer.add(row, image)
    return path


@pytest.fixture
def img2dataset_output(tmp_path):
    """img2dataset's layout: NNNNN.tar beside a Parquet that also lists failed downloads."""
    path = tmp_path / "i2d"
    path.mkdir()
    (path / "00000.tar").write_bytes(b"\0" * 1024)
    table = pa.table(
        {
            "key": ["000000000", "000000001"],
            "url": ["http://other.test/ok.jpg", "http://other.test/failed.jpg"],
            "status": ["success", "failed_to_download"],
        }
    )
    pq.write_table(table, path / "00000.parquet")
    return path


def test_dataset_urls(earlier, img2dataset_output):
    assert sorted(dataset_urls(earlier)) == [f"http://old.test/{i}.png" for i in range(5)]
    assert list(dataset_urls(img2dataset_output)) == ["http://other.test/ok.jpg"]  # failed rows were never samples


EXCLUDE_CANDS = [
    _cand("n1", "HTTP://OLD.test:80/1.png#x"),
    _cand("n2", "http://old.test/4.png?utm_source=feed"),
    _cand("n3", "http://old.test/9.png"),
    _cand("n4", "http://other.test/ok.jpg"),
    _cand("n5", "http://other.test/failed.jpg"),
    _cand("n6", None),
]


def _exclude_expected(earlier, i2d) -> dict[str, tuple]:
    return {
        "n1": (reasons.DEDUP, reasons.SEEN_BEFORE, f"in {earlier}"),
        "n2": (reasons.DEDUP, reasons.SEEN_BEFORE, f"in {earlier}"),
        "n3": ("kept",),
        "n4": (reasons.DEDUP, reasons.SEEN_BEFORE, f"in {i2d}"),
        "n5": ("kept",),
        "n6": ("kept",),
    }


def test_exclude_seen_plain_loop(earlier, img2dataset_output):
    kept, rejected = exclude_seen_pure(EXCLUDE_CANDS, [earlier, img2dataset_output])
    assert _verdicts(kept, rejected) == _exclude_expected(earlier, img2dataset_output)


def test_exclude_seen_stage(earlier, img2dataset_output, tmp_path):
    expected = sorted(_exclude_expected(earlier, img2dataset_output).items())
    with TestPipeline(runner="FnApiRunner") as p:
        cands = p | beam.Create(list(batched(EXCLUDE_CANDS, 4)))
        out = cands | "Exclude" >> ExcludeSeen(
            [earlier, img2dataset_output], str(tmp_path / "a"), rows_per_partition=4
        )  # 16 partitions
        assert_that(_beam_verdicts(out, "two"), equal_to(expected), label="CheckTwo")
        # Sized from the candidate count known in advance and the manifests: no count of the input, same verdicts.
        hinted = ExcludeSeen([earlier, img2dataset_output], str(tmp_path / "c"), 4, rows_hint=len(EXCLUDE_CANDS))
        assert_that(_beam_verdicts(cands | "ExcludeHinted" >> hinted, "hinted"), equal_to(expected), label="Hinted")
        nothing = cands | "ExcludeNothing" >> ExcludeSeen([], str(tmp_path / "b"))
        all_kept = [(c[fields.KEY], ("kept",)) for c in EXCLUDE_CANDS]
        assert_that(_beam_verdicts(nothing, "none"), equal_to(all_kept), label="CheckNone")


def test_exclude_seen_reads_datasets_on_another_filesystem(earlier, img2dataset_output, tmp_path):
    remote = [upload(earlier, "memfs://exclude/earlier"), upload(img2dataset_output, "memfs://exclude/i2d")]
    try:
        assert sorted(dataset_urls(remote[0])) == sorted(dataset_urls(earlier))
        expected = _exclude_expected(*remote)
        assert _verdicts(*exclude_seen_pure(EXCLUDE_CANDS, remote)) == expected
        with TestPipeline(runner="FnApiRunner") as p:  # in process, where memfs:// is registered
            out = (
                p
                | beam.Create(list(batched(EXCLUDE_CANDS, 4)))
                | ExcludeSeen(remote, str(tmp_path), rows_per_partition=4)
            )
            assert_that(_beam_verdicts(out, "remote"), equal_to(sorted(expected.items())), label="CheckRemote")
    finally:
        clear("memfs://exclude")


def test_exclude_seen_refuses_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        ExcludeSeen([tmp_path / "nowhere"], str(tmp_path / "work"))


def _variants(url: str, i: int) -> list[str]:
    """Spellings of one URL that name the same image, as crawls and link shares produce them."""
    head, sep, tail = url.partition("://")
    host, slash, path = tail.partition("/")
    base = f"{head.upper()}{sep}{host.upper()}{slash}{path}"
    joiner = "&" if "?" in url else "?"
    return [f"{url}#img{i}", f"{url}{joiner}utm_source=pin&fbclid=IwAR{i}", base]


def test_real_urls_collapse_with_their_variants(laion_sample):
    """1,000 real LAION rows plus three respellings of each: url mode keeps one per real URL, the original."""
    table = pq.read_table(laion_sample, columns=["URL", "TEXT"])
    rows = list(zip(table.column("URL").to_pylist(), table.column("TEXT").to_pylist(), strict=True))
    originals = [_cand(f"a{i:04d}", url, text) for i, (url, text) in enumerate(rows)]
    variants = [
        _cand(f"b{i:04d}_{j}", variant, f"  {text.upper()} " if j else text)
        for i, (url, text) in enumerate(rows)
        for j, variant in enumerate(_variants(url, i))
    ]
    everything = random.Random(1).sample(originals + variants, len(originals) + len(variants))
    distinct = {normalize_url(url) for url, _ in rows}

    kept, rejected = dedup_pure(everything, DedupConfig(by="url"))
    assert len(kept) == len(distinct) and len(kept) + len(rejected) == len(everything)
    assert all(c[fields.KEY].startswith("a") for c in kept)  # "a..." keys sort first: the originals survive
    assert {r[fields.REASON] for r in rejected} == {reasons.DUPLICATE_URL}

    # Pair mode: casefolded, re-spaced captions still match; a caption changed in words does not.
    kept, _ = dedup_pure(everything, DedupConfig(by="pair"))
    assert len(kept) == len({(normalize_url(url), caption_key(text)) for url, text in rows})
    reworded = [_cand(f"c{i:04d}", url, f"{text} (copy)") for i, (url, text) in enumerate(rows)]
    kept, _ = dedup_pure(everything + reworded, DedupConfig(by="pair"))
    assert len(kept) == 2 * len({(normalize_url(url), caption_key(text)) for url, text in rows})
