"""Image dedup: outcomes and precedence, transitive groups, signal vetoes, Beam against the union-find reference,
synthetic web."""

import hashlib
import io
import itertools
import random
import urllib.request

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.curate.components import UnionFind
from pipeline.curate.image_dedup import (
    DedupImages,
    DedupResult,
    ImageDedupConfig,
    decide,
    dedup_images_pure,
)
from pipeline.curate.image_refs import ReferenceSet, eval_hashes
from pipeline.fetch.image import ImageConfig, hamming, image_signals, process_image
from pipeline.rejection import Rejected
from pipeline.shards import DatasetWriter
from schemas import REJECTION_SCHEMA, fields, reasons
from schemas.reasons import REJECTED


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _row(key: str, sha: str | None, ph: int | None, sig: tuple = (None, None, None)) -> dict:
    """A sample row as image dedup reads it; `sig` is (original width, original height, colour_sig)."""
    return {
        fields.KEY: key,
        fields.URL: f"http://web.test/{key}.jpg",
        fields.CAPTION: f"a picture called {key}",
        fields.PAGE_URL: "http://web.test/page.html",
        fields.SOURCE: "crawl",
        fields.SOURCE_ROW: 7,
        fields.SHA256: sha,
        fields.PHASH: ph,
        fields.ORIGINAL_WIDTH: sig[0],
        fields.ORIGINAL_HEIGHT: sig[1],
        fields.COLOUR_SIG: sig[2],
        fields.DUP_GROUP: None,
    }


def _recolour(colour: int, field: int, steps: int) -> int:
    """`colour` with one 5-bit field of the signature moved by `steps` (kept within 0..31)."""
    shift = 5 * field
    value = colour >> shift & 31
    moved = value + steps if value + steps <= 31 else value - steps
    return colour & ~(31 << shift) | moved << shift


def _flip(h: int, n: int, rng: random.Random, avoid: set[int] = frozenset()) -> int:
    for b in rng.sample(sorted(set(range(64)) - avoid), n):
        h ^= 1 << b
    return h


def _outcomes(result: DedupResult) -> dict[str, tuple]:
    out = {r[fields.KEY]: ("kept", r[fields.DUP_GROUP]) for r in result.kept}
    out |= {r[fields.KEY]: (r[fields.REASON], r[fields.DETAIL]) for r in result.rejected}
    return out


def _sorted(result: DedupResult) -> tuple:
    def by_key(rows):
        return sorted(rows, key=lambda r: r[fields.KEY])

    return by_key(result.kept), by_key(result.rejected), sorted(result.groups)


P = 0x8F3A_11C2_5D70_E94B  # an arbitrary 64-bit phash (above 2**63, as half of all phashes are)


def test_config_is_validated():
    bad_settings = (
        {"k": -1},
        {"k": 16},
        {"rounds": 0},
        {"bucket_bits": 25},
        {"fallback_cap": -1},
        {"partitions": 0},
        {"max_aspect_change": -0.1},
        {"max_colour_change": 32},
    )
    for bad in bad_settings:
        with pytest.raises(ValueError):
            ImageDedupConfig(**bad)


def test_a_blocklisted_rejection_keeps_nothing_but_key_stage_reason_and_detail():
    tag, row = decide(_row("k1", "a" * 64, P), (0, "sha256:" + "a" * 64), None, None)
    assert tag == REJECTED and set(row) == set(REJECTION_SCHEMA.names)
    assert {k: v for k, v in row.items() if v is not None} == {
        fields.KEY: "k1",
        fields.STAGE: reasons.DEDUP,
        fields.REASON: reasons.BLOCKLISTED,
        fields.DETAIL: "sha256:" + "a" * 64,
    }
    tag, row = decide(_row("k1", "a" * 64, P), (1, "eval/0.png"), None, None)  # other sets keep the audit trail
    assert row[fields.URL] == "http://web.test/k1.jpg" and row[fields.REASON] == reasons.EVAL_CONTAMINATION


def test_exact_and_near_duplicates_together():
    rng = random.Random(0)
    rows = [
        _row("k2", _sha("x"), P),
        _row("k3", _sha("x"), P),  # same bytes as k2
        _row("k1", _sha("y"), _flip(P, 3, rng)),  # 3 bits from k2's picture: the smallest key of the group
        _row("k4", _sha("z"), P),  # other bytes, same phash (re-encoded): a near duplicate at distance 0
        _row("k5", _sha("w"), _flip(P, 20, rng)),
        _row("k6", None, None),  # no hashes (a foreign row): nothing to compare, kept
    ]
    result = dedup_images_pure(rows)
    assert _outcomes(result) == {
        "k1": ("kept", "k1"),
        "k2": (reasons.NEAR_DUPLICATE_IMAGE, "k1"),
        "k3": (reasons.DUPLICATE_IMAGE, "k2"),  # detail: the byte-identical survivor, itself a near duplicate
        "k4": (reasons.NEAR_DUPLICATE_IMAGE, "k1"),
        "k5": ("kept", None),
        "k6": ("kept", None),
    }
    assert sorted(result.groups) == [("k1", k) for k in ("k1", "k2", "k3", "k4")]
    # Without exact matching identical bytes are still near duplicates at distance 0; without near, only bytes.
    assert _outcomes(dedup_images_pure(rows, ImageDedupConfig(exact=False)))["k3"] == (
        reasons.NEAR_DUPLICATE_IMAGE,
        "k1",
    )
    only_exact = _outcomes(dedup_images_pure(rows, ImageDedupConfig(near=False)))
    assert only_exact["k2"] == ("kept", "k2") and only_exact["k3"] == (reasons.DUPLICATE_IMAGE, "k2")
    assert only_exact["k1"] == only_exact["k4"] == ("kept", None)


def test_groups_are_transitive_a_chain_is_one_group():
    # A~B and B~C with A and C 8 bits apart: connected components put all three in one group, on purpose: a chain
    # of small edits is still one picture, and no survivor should depend on which link was seen first.
    rng = random.Random(1)
    b = _flip(P, 4, rng)
    c = _flip(b, 4, rng, avoid={i for i in range(64) if (P ^ b) >> i & 1})
    assert hamming(P, b) == hamming(b, c) == 4 and hamming(P, c) == 8
    rows = [_row("c", _sha("c"), c), _row("a", _sha("a"), P), _row("b", _sha("b"), b)]
    assert _outcomes(dedup_images_pure(rows)) == {
        "a": ("kept", "a"),
        "b": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
        "c": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
    }
    assert _outcomes(dedup_images_pure(rows, ImageDedupConfig(k=3))) == {k: ("kept", None) for k in "abc"}


def test_signals_veto_candidate_pairs_that_are_other_pictures():
    colour = 0x0123_4567_89AB_CDE  # 60 bits: 12 fields of 5
    rows = [
        _row("a", _sha("a"), P, (400, 300, colour)),
        _row("b", _sha("b"), P ^ 0b11, (200, 150, colour)),  # resized and re-encoded: a near duplicate
        _row("c", _sha("c"), P ^ 0b1100, (416, 300, _recolour(colour, 4, 3))),  # cropped: aspect +3.9%, 3 steps
        _row("d", _sha("d"), P ^ 0b11_0000, (300, 400, colour)),  # portrait: not a crop of a landscape picture
        _row("e", _sha("e"), P ^ 0b1100_0000, (400, 300, _recolour(colour, 11, 4))),  # another colour
    ]
    assert _outcomes(dedup_images_pure(rows)) == {
        "a": ("kept", "a"),
        "b": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
        "c": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
        "d": ("kept", None),
        "e": ("kept", None),
    }
    no_veto = ImageDedupConfig(max_aspect_change=None, max_colour_change=None)
    assert {outcome for outcome in _outcomes(dedup_images_pure(rows, no_veto)).values()} == {
        ("kept", "a"),
        (reasons.NEAR_DUPLICATE_IMAGE, "a"),
    }


def test_a_missing_signal_never_vetoes():
    # A row from an older dataset has no colour_sig; one with neither size nor colour is compared on its phash alone.
    rows = [
        _row("a", _sha("a"), P, (400, 300, 0)),
        _row("b", _sha("b"), P ^ 0b11, (400, 300, None)),
        _row("c", _sha("c"), P ^ 0b1100, (None, None, None)),
    ]
    assert _outcomes(dedup_images_pure(rows)) == {
        "a": ("kept", "a"),
        "b": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
        "c": (reasons.NEAR_DUPLICATE_IMAGE, "a"),
    }


def _picture(seed: int) -> bytes:
    pixels = np.kron(np.random.default_rng(seed).integers(0, 255, (6, 6, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def references(tmp_path) -> tuple[list[ReferenceSet], dict]:
    """A blocklist, an eval folder of one picture and an earlier dataset of one sample, and their hashes."""
    rng = random.Random(2)
    h = {
        "block_sha": _sha("bad"),
        "block_ph": rng.getrandbits(64),
        "seen_sha": _sha("old"),
        "seen_ph": rng.getrandbits(64),
    }
    (tmp_path / "block.txt").write_text(f"# blocklist\n{h['block_sha']}\n{h['block_ph']:016x}\n")
    (tmp_path / "eval" / "sub").mkdir(parents=True)
    (tmp_path / "eval" / "sub" / "e.png").write_bytes(_picture(0))
    h["eval_ph"], h["eval_colour"] = image_signals(Image.open(tmp_path / "eval" / "sub" / "e.png").convert("RGB"))
    with DatasetWriter(tmp_path / "earlier") as writer:
        row = {fields.KEY: "old0", fields.URL: "http://old.test/0.png", fields.IMAGE_FORMAT: "png"}
        writer.add(row | {fields.SHA256: h["seen_sha"], fields.PHASH: h["seen_ph"]}, _picture(1))
    refs = [
        ReferenceSet(reasons.SEEN_BEFORE, str(tmp_path / "earlier")),
        ReferenceSet(reasons.EVAL_CONTAMINATION, str(tmp_path / "eval")),
        ReferenceSet(reasons.BLOCKLISTED, str(tmp_path / "block.txt")),
    ]
    return refs, h


def _reference_rows(h: dict) -> list[dict]:
    rng = random.Random(3)
    dup_ph = rng.getrandbits(64)
    return [
        _row("r1", h["block_sha"], rng.getrandbits(64)),
        _row("r2", _sha("r2"), _flip(h["block_ph"], 4, rng), (300, 100, 7)),  # a blocklist phash has no signals
        _row("r3", h["seen_sha"], _flip(h["eval_ph"], 2, rng)),  # seen before, and a near-copy of an eval image
        _row("r4", _sha("r4"), _flip(h["seen_ph"], 1, rng)),
        _row("r5", h["block_sha"], h["eval_ph"]),  # blocklisted bytes of an eval image: the blocklist wins
        _row("r6", h["seen_sha"], rng.getrandbits(64)),
        _row("r7", _sha("r7"), dup_ph),
        _row("r8", _sha("r7"), dup_ph),
        # Within 2 bits of the (96x96) eval picture, but 2:1, or another colour: vetoed, not contamination.
        _row("r9", _sha("r9"), _flip(h["eval_ph"], 1, rng), (200, 100, h["eval_colour"])),
        _row("r10", _sha("r10"), _flip(h["eval_ph"], 1, rng), (96, 96, _recolour(h["eval_colour"], 0, 5))),
    ]


def test_reference_sets_win_by_precedence_and_each_sample_gets_one_outcome(references):
    refs, h = references
    result = dedup_images_pure(_reference_rows(h), ImageDedupConfig(), refs)
    assert _outcomes(result) == {
        "r1": (reasons.BLOCKLISTED, f"sha256:{h['block_sha']}"),
        "r2": (reasons.BLOCKLISTED, f"phash:{h['block_ph']:016x}"),
        "r3": (reasons.EVAL_CONTAMINATION, "sub/e.png"),
        "r4": (reasons.SEEN_BEFORE, "earlier/old0"),
        "r5": (reasons.BLOCKLISTED, f"sha256:{h['block_sha']}"),
        "r6": (reasons.SEEN_BEFORE, "earlier/old0"),
        "r7": ("kept", "r7"),
        "r8": (reasons.DUPLICATE_IMAGE, "r7"),
        "r9": ("kept", None),
        "r10": ("kept", None),
    }
    assert len(result.kept) + len(result.rejected) == 10
    for row in result.rejected:
        if row[fields.REASON] == reasons.BLOCKLISTED:
            assert row[fields.URL] is row[fields.CAPTION] is row[fields.PAGE_URL] is row[fields.SOURCE] is None


def test_reference_matches_do_not_survive_or_link_groups(tmp_path):
    rng = random.Random(4)
    x = rng.getrandbits(64)
    a = _flip(x, 3, rng)
    b = _flip(x, 3, rng, avoid={i for i in range(64) if (x ^ a) >> i & 1})  # a and b: 6 bits apart, both 3 from x
    (tmp_path / "block.txt").write_text(f"{_sha('x')}\n")
    rows = [_row("a0", _sha("x"), x), _row("a1", _sha("a"), a), _row("a2", _sha("b"), b)]
    without = _outcomes(dedup_images_pure(rows))
    assert without["a1"] == without["a2"] == (reasons.NEAR_DUPLICATE_IMAGE, "a0")
    refs = [ReferenceSet(reasons.BLOCKLISTED, str(tmp_path / "block.txt"))]
    assert _outcomes(dedup_images_pure(rows, ImageDedupConfig(), refs)) == {
        "a0": (reasons.BLOCKLISTED, f"sha256:{_sha('x')}"),
        "a1": ("kept", None),
        "a2": ("kept", None),
    }


_SIGNALS = (fields.ORIGINAL_WIDTH, fields.ORIGINAL_HEIGHT, fields.COLOUR_SIG)


def _planted_rows(n: int, seed: int, k: int = 4) -> list[dict]:
    """n samples: random phashes and signals, clusters of near-copies (0..k+2 bits off; some with signals that veto
    the pair, some without signals), and some exact duplicates."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w, h = rng.choice(((400, 300), (300, 400), (500, 500), (640, 360)))
        rows.append(_row(f"s{i:05d}", _sha(f"{seed}-{i}"), rng.getrandbits(64), (w, h, rng.getrandbits(60))))
    for i in range(0, n, 5):
        src = rows[rng.randrange(n)]
        rows[i][fields.PHASH] = _flip(src[fields.PHASH], rng.randint(0, k + 2), rng)
        fate = rng.random()
        for name in _SIGNALS:
            rows[i][name] = None if fate < 0.1 else src[name]
        if 0.1 <= fate < 0.3:  # another aspect ratio than its source's, or the same
            rows[i][fields.ORIGINAL_WIDTH], rows[i][fields.ORIGINAL_HEIGHT] = rng.choice(((800, 600), (600, 800)))
        elif 0.3 <= fate < 0.5 and src[fields.COLOUR_SIG] is not None:  # 2 or 3 steps pass, 4 or 5 are vetoed
            rows[i][fields.COLOUR_SIG] = _recolour(src[fields.COLOUR_SIG], rng.randrange(12), rng.randint(2, 5))
    for i in range(2, n, 40):
        src = rows[rng.randrange(n)]
        for name in (fields.SHA256, fields.PHASH, *_SIGNALS):
            rows[i][name] = src[name]
    rng.shuffle(rows)
    return rows


def test_the_outcome_does_not_depend_on_input_order():
    rows = _planted_rows(2000, seed=5)
    expected = _sorted(dedup_images_pure(rows))
    reasons_seen = {r[fields.REASON] for r in expected[1]}
    assert reasons_seen == {reasons.DUPLICATE_IMAGE, reasons.NEAR_DUPLICATE_IMAGE}
    for seed in range(3):
        random.Random(seed).shuffle(rows)
        assert _sorted(dedup_images_pure(rows)) == expected


def _beam(rows: list[dict], cfg: ImageDedupConfig, refs=(), work: str | None = None) -> None:
    expected = dedup_images_pure(rows, cfg, refs)
    with TestPipeline() as p:
        dedup = DedupImages(cfg, refs, work, len(rows))
        out = p | beam.Create(rows, reshuffle=False).with_output_types(dict) | dedup
        assert_that(out.kept, equal_to(expected.kept), label="Kept")
        assert_that(out.rejected, equal_to(expected.rejected), label="Rejected")
        assert_that(out.groups, equal_to(expected.groups), label="Groups")


@pytest.mark.parametrize("spilled", [False, True], ids=["shuffled", "spilled"])
def test_beam_equals_the_union_find_reference(references, spilled, tmp_path):
    refs, h = references
    rows = _reference_rows(h) + _planted_rows(300, seed=6)
    _beam(rows, ImageDedupConfig(rounds=3, bucket_bits=2), refs, str(tmp_path / "work") if spilled else None)
    # Spilled, every grouping went through files (the rounds included), and none through Beam's shuffle of rows.
    assert not spilled or {"GroupSha", "JoinOutcomes", "JoinHits", "GroupBands", "CheckGroup"} <= {
        f.name for f in (tmp_path / "work").iterdir()
    }


@pytest.mark.slow
def test_beam_equals_the_union_find_reference_on_5000_planted_phashes():
    _beam(_planted_rows(5000, seed=7), ImageDedupConfig(rounds=4))


@pytest.mark.slow
def test_beam_equals_the_reference_with_exact_off_and_a_single_round(references):
    refs, h = references
    _beam(_reference_rows(h) + _planted_rows(1000, seed=8), ImageDedupConfig(exact=False, rounds=1), refs)


# --- The synthetic web: what the pHash finds of the near-copies it plants ---------------------------------------


@pytest.fixture(scope="module")
def web_samples(served_web) -> list[tuple[dict, dict]]:
    """(truth row, sample row) for every fault-free image of the served web, fetched, hashed and signed as the fetch
    stage does it (process_image)."""
    samples = []
    for truth in served_web.truth():
        if truth["kind"] != "image" or truth["fault"] != "none":
            continue
        with urllib.request.urlopen(truth["url"], timeout=30) as response:
            data = response.read()
        try:
            image = process_image(data, ImageConfig())
        except Rejected:
            continue
        sig = (image.original_width, image.original_height, image.colour_sig)
        samples.append((truth, _row(truth["id"], image.sha256, image.phash, sig)))
    return samples


def _truth_groups(samples: list[tuple[dict, dict]]) -> dict[str, str]:
    """Rows sharing a dup_group (same bytes) or a near_dup_group (same picture) are one group, transitively."""
    uf = UnionFind()
    for truth, _ in samples:
        uf.find(truth["id"])
        for label in (truth["dup_group"], truth["near_dup_group"]):
            if label:
                uf.union("group:" + label, truth["id"])
    return {truth["id"]: uf.find(truth["id"]) for truth, _ in samples}


def _pairwise(samples: list[tuple[dict, dict]], cfg: ImageDedupConfig) -> tuple[float, float]:
    truth = _truth_groups(samples)
    found = dict.fromkeys(truth, None) | {
        key: group for group, key in dedup_images_pure([s for _, s in samples], cfg).groups
    }
    tp = fp = fn = 0
    for a, b in itertools.combinations(truth, 2):
        same, grouped = truth[a] == truth[b], found[a] is not None and found[a] == found[b]
        tp, fp, fn = tp + (same and grouped), fp + (grouped and not same), fn + (same and not grouped)
    return tp / (tp + fn), tp / (tp + fp)


def test_synthetic_web_exact_duplicates_are_all_found(web_samples):
    result = dedup_images_pure([s for _, s in web_samples])
    truth = {t["id"]: t for t, _ in web_samples}
    dups = {r[fields.KEY]: r[fields.DETAIL] for r in result.rejected if r[fields.REASON] == reasons.DUPLICATE_IMAGE}
    by_group: dict[str, list[str]] = {}
    for t, _ in web_samples:
        if t["dup_group"]:
            by_group.setdefault(t["dup_group"], []).append(t["id"])
    assert by_group, "the test web plants exact duplicates"
    assert dups == {key: min(keys) for keys in by_group.values() for key in keys if key != min(keys)}
    assert all(truth[key]["dup_group"] == truth[survivor]["dup_group"] for key, survivor in dups.items())


def test_synthetic_web_near_duplicates_meet_the_issue_targets(web_samples):
    # The issue's targets at the default k=4. The plain 32x32 pHash reached recall 0.935, precision 0.956 here
    # (crops moved 6-10 bits; plain shapes collided); benchmarks/near_dup_quality.py has the 100-page numbers.
    recall, precision = _pairwise(web_samples, ImageDedupConfig())
    assert recall >= 0.95 and precision >= 0.99, (recall, precision)


def test_synthetic_web_vetoes_cost_no_recall(web_samples):
    no_veto = _pairwise(web_samples, ImageDedupConfig(max_aspect_change=None, max_colour_change=None))
    recall, precision = _pairwise(web_samples, ImageDedupConfig())
    assert recall == no_veto[0] and precision >= no_veto[1]


def _decontaminated(web_samples, web_dir) -> dict[str, tuple]:
    refs = [ReferenceSet(reasons.EVAL_CONTAMINATION, str(web_dir / "eval"))]
    return _outcomes(dedup_images_pure([s for _, s in web_samples], ImageDedupConfig(exact=False, near=False), refs))


def test_synthetic_web_leaks_within_k_of_their_eval_image_are_found(web_samples, web_dir):
    outcomes = _decontaminated(web_samples, web_dir)
    evals = {f"eval/{h.detail}": h.phash for h in eval_hashes(web_dir / "eval")}
    leaks = [(t, s) for t, s in web_samples if t["eval_leak"]]
    assert leaks, "the test web plants eval leaks"
    within = [(t, s) for t, s in leaks if hamming(evals[t["eval_leak"]], s[fields.PHASH]) <= 4]
    assert within
    for t, _ in within:
        assert outcomes[t["id"]] == (reasons.EVAL_CONTAMINATION, t["eval_leak"].removeprefix("eval/"))


def test_synthetic_web_every_leak_and_nothing_else_is_flagged(web_samples, web_dir):
    # With the plain 32x32 pHash one of the two leaks (crops) was 6 bits from its eval image, and three blue
    # squares on a noise background fell within 4 bits of eval images they are not copies of.
    outcomes = _decontaminated(web_samples, web_dir)
    flagged = {key for key, (reason, _) in outcomes.items() if reason == reasons.EVAL_CONTAMINATION}
    assert flagged == {t["id"] for t, _ in web_samples if t["eval_leak"]}
