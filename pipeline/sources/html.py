"""(image URL, text) pairs and links from an HTML page, with a real HTML parser (selectolax/lexbor)."""

import re
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from schemas import fields, make_key

# Lazy-loading sites keep the real image in data-* attributes and a placeholder in src.
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class ImageRef:
    url: str
    alt: str | None
    title: str | None
    figcaption: str | None


@dataclass(frozen=True)
class Page:
    url: str
    title: str | None
    lang: str | None
    images: tuple[ImageRef, ...]
    links: tuple[str, ...]


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    return _WS.sub(" ", text).strip()


def largest_from_srcset(srcset: str) -> str | None:
    """The candidate with the largest width (`800w`) or density (`2x`) descriptor; the first if none has one."""
    best, best_size = None, -1.0
    for part in srcset.split(","):
        tokens = part.strip().split()
        if not tokens:
            continue
        size = 0.0  # no descriptor means 1x; a srcset uses one kind of descriptor, so values compare directly
        if len(tokens) > 1 and tokens[1][-1:].lower() in ("w", "x"):
            try:
                size = float(tokens[1][:-1])
            except ValueError:
                pass
        if size > best_size:
            best, best_size = tokens[0], size
    return best


def absolute_url(base: str, ref: str | None) -> str | None:
    if not ref:
        return None
    ref = ref.strip()
    if ref.lower().startswith(("data:", "javascript:", "mailto:", "about:")):
        return None
    try:
        url = urldefrag(urljoin(base, ref)).url
        scheme = urlsplit(url).scheme
    except ValueError:
        # Unparsable (brackets that do not close): kept as written when it claims http(s), so the image stays a
        # candidate that fetching rejects as invalid_url instead of vanishing or failing the page.
        return ref if ref.lower().startswith(("http://", "https://")) else None
    return url if scheme in ("http", "https") else None


def extract_page(html: str | bytes, page_url: str) -> Page:
    """Every <img> (src, srcset's largest, lazy data-src), its alt/title/<figcaption>, the title, lang and links.

    URLs are resolved against <base href> (itself resolved against the page), protocol-relative ones included.
    """
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    tree = LexborHTMLParser(html)
    base_node = tree.css_first("base[href]")
    base = urljoin(page_url, base_node.attributes.get("href") or "") if base_node else page_url
    title_node = tree.css_first("title")
    html_node = tree.css_first("html")
    images = []
    for img in tree.css("img"):
        attrs = img.attributes
        ref = next((attrs[a] for a in _LAZY_ATTRS if attrs.get(a)), None) or attrs.get("src")
        if attrs.get("srcset"):
            ref = largest_from_srcset(attrs["srcset"]) or ref
        url = absolute_url(base, ref)
        if url is None:
            continue
        figcaption = None
        figure = img.parent
        while figure is not None and figure.tag not in ("figure", "body"):
            figure = figure.parent
        if figure is not None and figure.tag == "figure":
            cap = figure.css_first("figcaption")
            figcaption = _clean(cap.text(deep=True)) if cap else None
        images.append(ImageRef(url, _clean(attrs.get("alt")), _clean(attrs.get("title")), figcaption or None))
    links = []
    for a in tree.css("a[href]"):
        url = absolute_url(base, a.attributes.get("href"))
        if url:
            links.append(url)
    return Page(
        url=page_url,
        title=_clean(title_node.text()) if title_node else None,
        lang=(html_node.attributes.get("lang") or None) if html_node else None,
        images=tuple(images),
        links=tuple(dict.fromkeys(links)),
    )


def page_candidates(page: Page, source: str) -> list[dict]:
    """Candidates (CANDIDATE_SCHEMA rows) for a page's images; the caption is the alt text, else the figcaption,
    else the title attribute, as CLIP's WIT used alt text first. Raw fields are all kept for curation."""
    out = []
    for i, ref in enumerate(page.images):
        out.append(
            {
                fields.KEY: make_key(source, f"{page.url}#{i}", ref.url),
                fields.URL: ref.url,
                fields.CAPTION: ref.alt or ref.figcaption or ref.title or None,
                fields.ALT: ref.alt,
                fields.TITLE: ref.title,
                fields.FIGCAPTION: ref.figcaption,
                fields.PAGE_URL: page.url,
                fields.PAGE_TITLE: page.title,
                fields.PAGE_LANG: page.lang,
                fields.SOURCE: source,
                fields.SOURCE_ROW: i,
            }
        )
    return out
