"""Field names shared by candidates, samples, rejections and embeddings; import these, never retype strings."""

# Candidate: one (image URL, text) pair found in a source, before anything is fetched.
KEY = "key"
URL = "url"
CAPTION = "caption"  # the text the pair is judged and trained on (normalized later by text curation)
ALT = "alt"  # raw alt attribute, kept verbatim for audit
TITLE = "title"  # the <img title=...> attribute
FIGCAPTION = "figcaption"
PAGE_URL = "page_url"
PAGE_TITLE = "page_title"
PAGE_LANG = "page_lang"
SOURCE = "source"  # where the candidate came from, e.g. "urls:laion.parquet", "crawl", "warc:CC-MAIN-..."
SOURCE_ROW = "source_row"  # row or record number within that source

# Sample: a fetched, decoded, kept image with its text.
STATUS = "status"
REASON = "reason"
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
IMAGE_FORMAT = "image_format"  # extension of the stored image member: jpg, png or webp
BYTES = "bytes"  # size of the stored image member
SHA256 = "sha256"  # of the original bytes as fetched (exact-duplicate and blocklist key)
PHASH = "phash"  # 64-bit perceptual hash of the image, for near-duplicate detection
COLOUR_SIG = "colour_sig"  # mean colour of the image's quadrants, packed (pipeline.fetch.image.colour_signature)
LANG = "lang"
LANG_SCORE = "lang_score"
MATCHED_ENTRIES = "matched_entries"  # query-list entries the caption matched (WIT balancing)
DUP_GROUP = "dup_group"  # key of the duplicate group this survivor stands for, if any
CLIP_SCORE = "clip_score"  # cosine of image and caption embeddings, by the model `wit filter` was given
SEM_CLUSTER = "sem_cluster"  # k-means cluster of the image embedding (semantic deduplication)
SEM_GROUP = "sem_group"  # key of the semantic-duplicate group this survivor stands for, if any
HTTP_STATUS = "http_status"

# Rejection: a candidate that did not make it, with enough to retry or audit without a join.
STAGE = "stage"
DETAIL = "detail"

# Crawl log: one row per page a crawl tried.
DEPTH = "depth"
IMAGES = "images"
LINKS = "links"

# Query balancing: matched pairs per query-list entry, before and after balancing.
ENTRY = "entry"
COUNT_BEFORE = "count_before"
COUNT_AFTER = "count_after"

# Embeddings.
EMBEDDING = "embedding"
MODEL = "model"

STATUS_SUCCESS = "success"

# Values IMAGE_FORMAT may take: the extension of the image member in a shard tar.
IMAGE_FORMATS = ("jpg", "png", "webp")
