"""The faults the synthetic web serves, the outcome a polite fetcher should reach on each, and their hostile bytes."""

import functools
import random
import struct
import zlib

from pipeline.fetch.politeness import USER_AGENT_TOKEN
from schemas import reasons

OK = "ok"  # expected outcome of a URL that fetches and decodes (with default fetch and image configs)

# fault -> expected outcome for our user agent ("ok" or a schemas.reasons code), what it is.
FAULTS: dict[str, tuple[str, str]] = {
    "none": (OK, "served as is"),
    "http_404": (reasons.HTTP_4XX, "no such URL: 404"),
    "http_500": (reasons.HTTP_5XX, "server error: 500"),
    "retry_429": (OK, "429 with Retry-After on the first request to this URL (per server), 200 afterwards"),
    "always_429": (reasons.RATE_LIMITED, "429 with Retry-After on every request"),
    "slow": (OK, "answered after WebConfig.slow_delay seconds"),
    "redirect_301": (OK, "301 to an image (target in the truth)"),
    "redirect_302": (OK, "302 to an image on another host"),
    "redirect_loop": (reasons.TOO_MANY_REDIRECTS, "302 to a URL that redirects back"),
    "noai": (reasons.OPTOUT_HEADER, "X-Robots-Tag: noai"),
    "noai_our_agent": (reasons.OPTOUT_HEADER, f"X-Robots-Tag: {USER_AGENT_TOKEN}: noimageai (scoped to us)"),
    "noai_other_agent": (OK, "X-Robots-Tag: otherbot: noai (scoped to another agent)"),
    "image_as_html": (reasons.NOT_AN_IMAGE, "a real image sent as text/html"),
    "html_as_jpg": (reasons.NOT_AN_IMAGE, "an HTML page at a .jpg URL"),
    "truncated": (reasons.DECODE_ERROR, "a JPEG cut off half-way"),
    "corrupt": (reasons.DECODE_ERROR, "a valid PNG header followed by garbage"),
    "tiny": (reasons.TOO_SMALL, "a 16x16 icon"),
    "bomb": (reasons.TOO_MANY_PIXELS, "a small PNG declaring WebConfig.bomb_side squared pixels"),
    "robots_private": (reasons.ROBOTS_DISALLOWED, "under /private/, disallowed for every agent"),
    "robots_agent": (reasons.ROBOTS_DISALLOWED, f"under /no-wit/, disallowed for {USER_AGENT_TOKEN} only"),
}
# Faults planted as images on regular pages, once per 25 pages (at least once).
IMAGE_FAULTS = tuple(f for f in FAULTS if f != "none")

# One robots.txt per host. Host 0 adds groups for named bots; a named group replaces the * group for that bot
# (RFC 9309), which is why the wit-builder group repeats /private/.
_ROBOTS_ALL = "User-agent: *\nDisallow: /private/\nDisallow: /cgi-bin/\n"
_ROBOTS_HOST0 = (
    "# Synthetic web, host 0.\n"
    "User-agent: CCBot\nDisallow: /\n\n"
    f"User-agent: {USER_AGENT_TOKEN}\nDisallow: /private/\nDisallow: /no-wit/\n\n" + _ROBOTS_ALL
)


def robots_txt(host: int) -> str:
    return _ROBOTS_HOST0 if host == 0 else f"# Synthetic web, host {host}.\n" + _ROBOTS_ALL


def error_page(status: int, message: str) -> bytes:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{status} {message}</title></head>'
        f"<body><h1>{status} {message}</h1></body></html>\n"
    ).encode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.lru_cache(maxsize=4)
def bomb_png(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels, all black: ~100 KB that decode to side**2 pixels.

    The raw image (side**2 / 8 bytes) is never built: a block of identical rows is deflated once, ended with a full
    flush (which resets the compressor, so the next identical block compresses to the same bytes), and repeated.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    rows_per_block = 256
    full, rest = divmod(side, rows_per_block)
    block = row * rows_per_block
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and Adler-32 are added below
    packed = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(row * rest) + deflate.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(full):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * rest, checksum)
    stream = b"\x78\xda" + packed * full + tail + struct.pack(">I", checksum)
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def truncated(data: bytes) -> bytes:
    """The first half of an encoded image: the header parses, the pixels run out."""
    return data[: len(data) // 2]


def corrupt_png(width: int, height: int, rng: random.Random) -> bytes:
    """A PNG whose signature and IHDR are valid (so it sniffs as an image of width x height) and whose image data is
    random garbage with a wrong checksum."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    garbage = rng.randbytes(2048)
    idat = struct.pack(">I", len(garbage)) + b"IDAT" + garbage + b"\xde\xad\xbe\xef"
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + idat + _chunk(b"IEND", b"")
