"""Site layout of the synthetic web: pages, their links across hosts, and the HTML that references images."""

import posixpath
import random
from dataclasses import dataclass, field

from synthweb.captions import html_escape

# Ports are only known when the web is served: HTML and Location headers hold "{{host3}}", which the server replaces
# with the host's "127.0.0.1:PORT" once, at start-up.
PLACEHOLDER = "{{{{host{}}}}}"

_TITLES = {
    "en": ("Gallery {n} | Shapes & Colours", "Kid's art corner, part {n}", "Blog: {n} things I drew this week"),
    "fr": ("Galerie {n} — Formes et couleurs", "Mes dessins préférés n°{n}"),
    "de": ("Galerie {n} – Formen und Farben", "Unsere Bilder, Teil {n}"),
    "es": ("Galería {n} — Formas y colores", "Mis dibujos favoritos, parte {n}"),
}
_INTROS = {
    "en": "Pictures from our collection. Click an image to see it in full size; more below the fold.",
    "fr": "Des images de notre collection. Cliquez sur une image pour l'agrandir.",
    "de": "Bilder aus unserer Sammlung. Für die volle Größe bitte auf ein Bild klicken.",
    "es": "Imágenes de nuestra colección. Haga clic en una imagen para verla en tamaño completo.",
}
_LINK_TEXT = {"en": "Next page", "fr": "Page suivante", "de": "Nächste Seite", "es": "Página siguiente"}


def placeholder(host: int) -> str:
    return PLACEHOLDER.format(host)


@dataclass
class Block:
    """One image on a page: a plain <img>, an <img srcset>, or a <figure> with a <figcaption>."""

    kind: str  # img | srcset | figure
    src: str  # truth id of the URL in src
    alt: str
    has_alt: bool = True
    title: str | None = None
    figcaption: str | None = None
    srcset: list[tuple[str, int]] = field(default_factory=list)  # (truth id, width descriptor), smallest first
    width: int | None = None  # the width/height attributes, as a CMS writes them
    height: int | None = None
    style: str | None = None  # force a URL style (the <base href> page uses relative URLs)


@dataclass
class Page:
    id: str
    host: int
    path: str
    lang: str
    title: str
    base: tuple[int, str] | None = None  # (host, directory) of a <base href>
    links: list[str] = field(default_factory=list)  # truth ids of pages
    blocks: list[Block] = field(default_factory=list)
    seed: bool = False
    fault: str = "none"

    @property
    def context(self) -> tuple[int, str]:
        """Host and directory that relative URLs on this page resolve against."""
        return self.base or (self.host, posixpath.dirname(self.path))


def _page_path(i: int, rng: random.Random) -> str:
    pattern = rng.randrange(4)
    if pattern == 0:
        return f"/gallery/page-{i}.html"
    if pattern == 1:
        return f"/blog/20{rng.randrange(15, 24)}/{rng.randrange(1, 13):02d}/post-{i}.html"
    if pattern == 2:
        return f"/articles/shapes-{i}.html"
    return f"/p/{i}"


def plan_pages(pages: int, hosts: int, rng: random.Random) -> list[Page]:
    """Regular pages (host i % hosts, the first on each host at "/"), one page behind robots' /private/ and one
    404, linked so that every regular page is reachable from the seeds (a chain) and hosts link to each other."""
    plan = []
    for i in range(pages):
        lang = rng.choices(("en", "fr", "de", "es"), weights=(7, 1, 1, 1))[0]
        host = i % hosts
        plan.append(
            Page(
                id=f"page-{i:04d}",
                host=host,
                path="/" if i < hosts else _page_path(i, rng),
                lang=lang,
                title=rng.choice(_TITLES[lang]).format(n=i + 1),
                seed=i < hosts,
            )
        )
    last = plan[-1]
    last.base = ((last.host + 1) % hosts, "/media")  # its images live on the next host, written relative to <base>
    private = Page(
        f"page-{pages:04d}", 0, "/private/drafts.html", "en", "Drafts (do not index)", fault="robots_private"
    )
    missing = Page(f"page-{pages + 1:04d}", min(1, hosts - 1), "/gallery/missing.html", "en", "", fault="http_404")
    for i, page in enumerate(plan):
        links = {plan[(i + 1) % pages].id, plan[page.host].id}
        links.update(p.id for p in rng.sample(plan, min(2, pages)))
        if page.seed:  # every host's home page links to every other host's
            links.update(p.id for p in plan[:hosts])
        links.discard(page.id)
        page.links = sorted(links)
    plan[0].links.append(private.id)
    plan[1].links.append(missing.id)
    private.links = [plan[0].id]
    return [*plan, private, missing]


def ref(target: tuple[int, str], context: tuple[int, str], style: str) -> str:
    """How a page writes the URL of `target` (host, path): absolute, protocol-relative, root-relative or relative.

    Root-relative and relative URLs only reach the host the page resolves against; they fall back to absolute.
    """
    host, path = target
    ctx_host, ctx_dir = context
    if host == ctx_host and style == "rel":
        rel = posixpath.relpath(path, ctx_dir)
        return rel + "/" if path.endswith("/") else rel
    if host == ctx_host and style == "root":
        return path
    if style == "proto":
        return f"//{placeholder(host)}{path}"
    return f"http://{placeholder(host)}{path}"


def _style(rng: random.Random, same_host: bool) -> str:
    if same_host:
        return rng.choices(("abs", "proto", "root", "rel"), weights=(2, 1.5, 3.5, 3))[0]
    return rng.choices(("abs", "proto"), weights=(3, 2))[0]


def _attr(name: str, value: object) -> str:
    return f' {name}="{html_escape(str(value))}"'


def page_html(page: Page, locs: dict[str, tuple[int, str]], rng: random.Random) -> str:
    """The page's HTML (UTF-8, entities in text and attributes) with host placeholders in absolute URLs."""
    ctx = page.context

    def url(truth_id: str, style: str | None = None) -> str:
        target = locs[truth_id]
        return ref(target, ctx, style or _style(rng, target[0] == ctx[0]))

    head = [f"<title>{html_escape(page.title)}</title>"]
    if page.base:
        head.append(f'<base href="http://{placeholder(page.base[0])}{page.base[1]}/">')
    text = html_escape(_LINK_TEXT[page.lang])
    nav = [f'<a href="{url(pid)}">{text} {n}</a>' for n, pid in enumerate(page.links, 1)]
    body = []
    for b in page.blocks:
        attrs = _attr("src", url(b.src, b.style))
        if b.srcset:
            attrs += _attr("srcset", ", ".join(f"{url(i, b.style)} {w}w" for i, w in b.srcset))
            attrs += _attr("sizes", "(max-width: 600px) 100vw, 50vw")
        if b.has_alt:
            attrs += _attr("alt", b.alt)
        if b.title:
            attrs += _attr("title", b.title)
        if b.width and b.height:
            attrs += _attr("width", b.width) + _attr("height", b.height)
        img = f'<img{attrs} loading="lazy">'
        if b.kind == "figure":
            body.append(f"<figure>\n  {img}\n  <figcaption>{html_escape(b.figcaption or '')}</figcaption>\n</figure>")
        else:
            body.append(f"<p>{img}</p>")
    lines = [
        "<!DOCTYPE html>",
        f'<html lang="{page.lang}">',
        "<head>",
        '<meta charset="utf-8">',
        *head,
        "</head>",
        "<body>",
        "<header><nav>",
        *nav,
        "</nav></header>",
        "<main>",
        f"<h1>{html_escape(page.title)}</h1>",
        f"<p>{html_escape(_INTROS[page.lang])}</p>",
        *body,
        "</main>",
        f'<footer><p>&copy; Synthetic web, host {page.host}. <a href="{url(page.links[0])}">More</a></p></footer>',
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(lines)
