"""Text curation: normalization, rules with reason codes, language ID (both backends), the Beam stage."""

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.batches import Unbatch, batched
from pipeline.curate.text import (
    CurateText,
    FastTextLangId,
    LangdetectLangId,
    TextConfig,
    caption_reason,
    curate,
    is_boilerplate,
    normalize_caption,
)
from schemas import fields, reasons
from schemas.reasons import REJECTED


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cafÃ© au lait", "café au lait"),  # mojibake: UTF-8 read as Latin-1
        ("Fish &amp; Chips &#39;special&#39;", "Fish & Chips 'special'"),
        ("  a\tred\n\ncircle\u200b  ", "a red circle"),
        ("bell\x07 ring", "bell ring"),
        (None, ""),
    ],
)
def test_normalize(raw, clean):
    assert normalize_caption(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        "IMG_0042.JPG",
        "Screenshot 2021-03-16 at 10.16.13",
        "DSC01234",
        "dsc_0001.jpeg",
        "photo (3).png",
        "image",
        "Logo",
        "icon 2",
        "untitled-1",
        "https://example.com/a.jpg",
        "www.example.com",
        "12345",
        "2019-05-01",
        "click here",
        "PXL_20210101_123456",
    ],
)
def test_boilerplate(text):
    assert is_boilerplate(text)


@pytest.mark.parametrize("text", ["a red circle", "Imagine Dragons live", "Logo design for a bakery", "IMG of a cat"])
def test_not_boilerplate(text):
    assert not is_boilerplate(text)


def test_rules():
    cfg = TextConfig(min_words=2, max_words=5, min_chars=5, max_chars=40)
    assert caption_reason("", cfg) == reasons.EMPTY_CAPTION
    assert caption_reason("IMG_0042.JPG", cfg) == reasons.BOILERPLATE
    assert caption_reason("a b", cfg) == reasons.TOO_SHORT
    assert caption_reason("elephant", cfg) == reasons.TOO_FEW_WORDS
    assert caption_reason("one two three four five six", cfg) == reasons.TOO_MANY_WORDS
    assert caption_reason("x" * 20 + " " + "y" * 20, cfg) == reasons.TOO_LONG
    assert caption_reason("a red circle", cfg) is None
    strict = TextConfig(reject_title_only=True)
    assert caption_reason("Shapes &amp; Colours", strict, page_title="Shapes &amp; Colours") is None  # not normalized
    assert caption_reason("Shapes & Colours", strict, page_title="shapes &amp; colours") == reasons.CAPTION_IS_TITLE
    assert caption_reason("Shapes & Colours", TextConfig(), page_title="Shapes & Colours") is None


@pytest.mark.parametrize("lang_id", [FastTextLangId, LangdetectLangId])
def test_language_id_backends(lang_id):
    lid = lang_id()
    assert lid.detect("a photograph of a large red circle on a grey background")[0] == "en"
    assert lid.detect("une photo d'un grand cercle rouge sur un fond gris")[0] == "fr"
    assert lid.detect("ein Foto von einem großen roten Kreis auf grauem Hintergrund")[0] == "de"


def test_langdetect_is_deterministic():
    text = "el gato duerme en la casa"
    assert len({LangdetectLangId().detect(text) for _ in range(5)}) == 1


def test_curate_short_captions_are_not_guessed():
    lid = FastTextLangId()
    out, reason = curate({fields.KEY: "k", fields.CAPTION: "Rote Kreise"}, TextConfig(), lid)
    assert reason is None and out[fields.LANG] is None
    out, reason = curate({fields.KEY: "k", fields.CAPTION: "un grand cercle rouge sur fond gris"}, TextConfig(), lid)
    assert reason == reasons.LANGUAGE and out[fields.LANG] == "fr"
    out, reason = curate(
        {fields.KEY: "k", fields.CAPTION: "une photo du grand cercle rouge"}, TextConfig(languages=()), lid
    )
    assert reason is None and out[fields.LANG] == "fr" and out[fields.LANG_SCORE] > 0.3


def test_a_language_is_rejected_only_when_the_model_is_sure():
    """The lite model gives short English captions low scores, often under another language's name: kept."""
    lid = FastTextLangId()
    for caption in ("A polka-dot yellow star", "Green cross icon, polka-dot", "Solid red circle clipart"):
        lang, score = lid.detect(caption)
        assert score < TextConfig().min_lang_score, (caption, lang, score)  # the premise: the model is unsure
        out, reason = curate({fields.KEY: "k", fields.CAPTION: caption}, TextConfig(), lid)
        assert reason is None and out[fields.LANG] == "und" and out[fields.LANG_SCORE] == pytest.approx(score)
    assert curate({fields.KEY: "k", fields.CAPTION: "Foto de una estrella naranja"}, TextConfig(), lid)[1] == (
        reasons.LANGUAGE
    )


def test_real_captions_funnel(laion_sample):
    """On 1,000 real LAION captions the rules keep most, and every caption gets exactly one verdict."""
    captions = pq.read_table(laion_sample, columns=["TEXT"]).column("TEXT").to_pylist()
    lid = FastTextLangId()
    verdicts = [curate({fields.KEY: str(i), fields.CAPTION: c}, TextConfig(), lid)[1] for i, c in enumerate(captions)]
    kept = verdicts.count(None)
    assert len(verdicts) == 1000
    assert 450 < kept < 950, kept  # LAION-400M is mostly English with a long non-English tail
    assert verdicts.count(reasons.LANGUAGE) > 30


def test_curate_text_stage():
    cands = [
        {fields.KEY: "a", fields.CAPTION: "a photo of a red circle on a grey background"},
        {fields.KEY: "b", fields.CAPTION: "IMG_0042.JPG"},
        {fields.KEY: "c", fields.CAPTION: "une photo d'un cercle rouge sur un fond gris"},
        {fields.KEY: "d", fields.CAPTION: None},
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(list(batched(cands, 3))) | CurateText(TextConfig())
        kept = out.kept | "Kept" >> beam.FlatMap(lambda rows: [(c[fields.KEY], c[fields.LANG]) for c in rows])
        assert_that(kept, equal_to([("a", "en")]), label="k")
        assert_that(
            out[REJECTED] | Unbatch() | beam.Map(lambda r: (r[fields.KEY], r[fields.STAGE], r[fields.REASON])),
            equal_to([("b", "text", "boilerplate"), ("c", "text", "language"), ("d", "text", "empty_caption")]),
            label="r",
        )
