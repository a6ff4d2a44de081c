"""One candidate into one sample: fetch its URL under the request rules (pipeline.fetch.http), process the image,
and make the SAMPLE_SCHEMA row, or the Rejected that says why not."""

from collections.abc import Callable

from pipeline.fetch.http import Fetcher, fetch_image
from pipeline.fetch.image import ImageConfig, ProcessedImage, process_image
from pipeline.rejection import Rejected
from schemas import CANDIDATE_SCHEMA, SAMPLE_SCHEMA, fields, reasons

_CANDIDATE = frozenset(CANDIDATE_SCHEMA.names)

ImageProcessor = Callable[[bytes, ImageConfig], ProcessedImage]


def sample_from_candidate(
    fetcher: Fetcher, candidate: dict, image_cfg: ImageConfig, process: ImageProcessor = process_image
) -> tuple[dict, bytes]:
    """Fetch and process one candidate into a (SAMPLE_SCHEMA row, image bytes) pair; raises Rejected.

    `process` runs the image work: in this thread by default, or handed to a process pool by the caller.
    """
    url = candidate[fields.URL]
    if not url:
        raise Rejected(reasons.INVALID_URL, "empty URL")
    fetched = fetch_image(fetcher, url)
    img = process(fetched.data, image_cfg)
    # The candidate's fields, and what curation added to it (language, matched query entries) travel on.
    row = {name: candidate.get(name) for name in SAMPLE_SCHEMA.names if name in candidate or name in _CANDIDATE}
    row.update(
        {
            fields.STATUS: fields.STATUS_SUCCESS,
            fields.HTTP_STATUS: fetched.status,
            fields.WIDTH: img.width,
            fields.HEIGHT: img.height,
            fields.ORIGINAL_WIDTH: img.original_width,
            fields.ORIGINAL_HEIGHT: img.original_height,
            fields.IMAGE_FORMAT: img.ext,
            fields.BYTES: len(img.data),
            fields.SHA256: img.sha256,
            fields.PHASH: img.phash,
            fields.COLOUR_SIG: img.colour_sig,
        }
    )
    return row, img.data


def fetch_or_reject(
    fetcher: Fetcher, candidate: dict, image_cfg: ImageConfig, process: ImageProcessor = process_image
) -> tuple[dict, bytes] | Rejected:
    """A sample, or the Rejected (with `.candidate` set) that says why not: every candidate gets one answer."""
    try:
        return sample_from_candidate(fetcher, candidate, image_cfg, process)
    except Rejected as e:
        e.candidate = candidate
        return e
