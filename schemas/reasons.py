"""Stages of a build and the stable reason codes a candidate can be rejected with (the funnel's vocabulary).

Codes are part of the on-disk contract: reports, reruns and audits group by them, so a code is never
renamed or reused for another meaning; new ones are added.
"""

from dataclasses import dataclass

# The tag of a stage's rejected output (Beam's TaggedOutput): REJECTION_SCHEMA rows, each with a code below.
REJECTED = "rejected"

# Stages, in the order a candidate meets them.
SOURCE = "source"
CRAWL = "crawl"
TEXT = "text"
DEDUP = "dedup"
BALANCE = "balance"
FETCH = "fetch"
IMAGE = "image"
SHARDS = "shards"
SCORE = "score"
STAGES = (SOURCE, CRAWL, TEXT, DEDUP, BALANCE, FETCH, IMAGE, SHARDS, SCORE)


@dataclass(frozen=True)
class Reason:
    code: str
    stage: str
    description: str


_ALL: dict[str, Reason] = {}


def _reason(code: str, stage: str, description: str) -> str:
    if code in _ALL:
        raise ValueError(f"reason code {code!r} defined twice")
    _ALL[code] = Reason(code, stage, description)
    return code


# source / crawl
MALFORMED_ROW = _reason("malformed_row", SOURCE, "source row lacks a usable URL or text")
INVALID_URL = _reason("invalid_url", SOURCE, "URL is not absolute http(s) or cannot be parsed")
MALFORMED_RECORD = _reason("malformed_record", CRAWL, "WARC/WAT record or HTML page could not be parsed")
NOT_HTML = _reason("not_html", CRAWL, "page or record is not HTML")

# text curation
EMPTY_CAPTION = _reason("empty_caption", TEXT, "no text at all")
TOO_FEW_WORDS = _reason("too_few_words", TEXT, "caption has fewer words than configured")
TOO_MANY_WORDS = _reason("too_many_words", TEXT, "caption has more words than configured")
TOO_SHORT = _reason("too_short", TEXT, "caption has fewer characters than configured")
TOO_LONG = _reason("too_long", TEXT, "caption has more characters than configured")
BOILERPLATE = _reason("boilerplate", TEXT, "alt text is a file name, a URL, a number or a stock word")
CAPTION_IS_TITLE = _reason("caption_is_title", TEXT, "caption only repeats the page title")
LANGUAGE = _reason("language", TEXT, "caption language not in the keep list")

# duplicates and exclusion
DUPLICATE_URL = _reason("duplicate_url", DEDUP, "same normalized image URL as a kept candidate")
DUPLICATE_PAIR = _reason("duplicate_pair", DEDUP, "same (URL, caption) pair as a kept candidate")
DUPLICATE_IMAGE = _reason("duplicate_image", DEDUP, "same image bytes (sha256) as a kept sample")
NEAR_DUPLICATE_IMAGE = _reason("near_duplicate_image", DEDUP, "perceptual hash within k bits of a kept sample")
SEEN_BEFORE = _reason("seen_before", DEDUP, "already present in an earlier dataset (--exclude-from)")
EVAL_CONTAMINATION = _reason("eval_contamination", DEDUP, "near-copy of an evaluation image")
BLOCKLISTED = _reason("blocklisted", DEDUP, "hash matches the blocklist; the image is never written")

# query balancing (WIT / MetaCLIP)
NO_QUERY_MATCH = _reason("no_query_match", BALANCE, "caption matches no entry of the query list")
OVER_QUERY_CAP = _reason("over_query_cap", BALANCE, "all matched queries already hold t pairs")

# fetch
BLOCKED_ADDRESS = _reason("blocked_address", FETCH, "host resolves to a loopback, private or other non-public address")
BLOCKED_SCHEME = _reason("blocked_scheme", FETCH, "URL scheme is not http or https")
OPTOUT_LIST = _reason("optout_list", FETCH, "domain or URL prefix on the configured opt-out list")
ROBOTS_DISALLOWED = _reason("robots_disallowed", FETCH, "robots.txt disallows the URL for our user agent")
OPTOUT_HEADER = _reason("optout_header", FETCH, "X-Robots-Tag noai/noimageai/none/noindex for our user agent")
HTTP_4XX = _reason("http_4xx", FETCH, "client error status other than 429 (detail holds the status)")
HTTP_5XX = _reason("http_5xx", FETCH, "server error status other than 503 (detail holds the status)")
HTTP_OTHER = _reason("http_other", FETCH, "neither success, redirect nor error (detail holds the status)")
RATE_LIMITED = _reason("rate_limited", FETCH, "429/503 persisted through every allowed retry")
TIMEOUT = _reason("timeout", FETCH, "connect or read timed out")
DNS_ERROR = _reason("dns_error", FETCH, "host name does not resolve")
CONNECT_ERROR = _reason("connect_error", FETCH, "connect or TLS failure, or connection reset")
TOO_MANY_REDIRECTS = _reason("too_many_redirects", FETCH, "redirect chain too long or looping")
NOT_AN_IMAGE = _reason("not_an_image", FETCH, "response Content-Type is not an image")
TOO_LARGE = _reason("too_large", FETCH, "response body over the configured byte limit")

# image decoding and checks
DECODE_ERROR = _reason("decode_error", IMAGE, "bytes are not a decodable image (corrupt or truncated)")
TOO_MANY_PIXELS = _reason("too_many_pixels", IMAGE, "declared pixel count over the limit (decompression bomb)")
TOO_SMALL = _reason("too_small", IMAGE, "image smaller than the configured minimum side")
BAD_ASPECT_RATIO = _reason("bad_aspect_ratio", IMAGE, "aspect ratio outside the configured range")

# shard writing
INVALID_KEY = _reason("invalid_key", SHARDS, "key does not match [A-Za-z0-9_-]+ or is too long")

# model-based filtering
LOW_CLIP_SCORE = _reason("low_clip_score", SCORE, "image-text similarity below the threshold")
SEMANTIC_DUPLICATE = _reason("semantic_duplicate", SCORE, "embedding within the threshold of a kept sample")
UNWANTED_CONCEPT = _reason("unwanted_concept", SCORE, "image embedding close to an unwanted-concept prompt")
EVAL_SIMILAR = _reason("eval_similar", SCORE, "image embedding within the threshold of an evaluation image")
NO_EMBEDDING = _reason("no_embedding", SCORE, "sample has no row in the embeddings folder (the encoder skipped it)")


REASONS: dict[str, Reason] = dict(_ALL)

# Failures that say nothing about the image, only about the moment: `wit fetch --retry-failed` tries these again.
TRANSIENT = frozenset({TIMEOUT, CONNECT_ERROR, DNS_ERROR, HTTP_5XX, RATE_LIMITED})


def stage_of(code: str) -> str:
    """The stage a reason code belongs to; KeyError for an unknown code."""
    return REASONS[code].stage


def is_known(code: str) -> bool:
    return code in REASONS
