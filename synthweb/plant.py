"""Planting the faults: one URL per fault kind (per 25 pages), each referenced from a regular page's HTML."""

import hashlib

from pipeline.fetch.politeness import USER_AGENT_TOKEN
from synthweb import faults as flt
from synthweb.draw import encode, render
from synthweb.site import Block, Page, placeholder
from synthweb.spec import CONTENT_TYPES

_HTML = "text/html; charset=utf-8"
_VIEWER = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Photo viewer</title></head>'
    b"<body><p>Turn on JavaScript to see this photo.</p></body></html>\n"
)
# Faults that serve a real picture, only differently: how the route serves it.
_HEADER_FAULTS = {
    "noai": "noai",
    "noai_our_agent": f"{USER_AGENT_TOKEN}: noimageai",
    "noai_other_agent": "otherbot: noai",
}


def plant_faults(b, pages: list[Page]) -> None:
    """Add every fault to the web `b` (a generate._Builder) on regular pages taken in a shuffled round-robin, and
    give the robots-disallowed page a picture of its own (which a polite crawler never sees)."""
    regular = [p for p in pages if p.fault == "none"]
    order = b.rng.sample(regular, len(regular))
    k = 0
    for n in range(max(1, b.cfg.pages // 25)):
        for fault in flt.IMAGE_FAULTS:
            _plant(b, fault, order[k % len(order)], n)
            k += 1
    private = next(p for p in pages if p.fault == "robots_private")
    _picture(b, "robots_private", private, 0, "/private/img/draft-0.jpg")


def _retry_after(b) -> list[list[str]]:
    return [["Retry-After", str(b.cfg.retry_after)]]


def _common(b, fault: str, page: Page, d) -> dict:
    return {"page": page.id, "ref": "img", "fault": fault} | b.good_caption(d)


def _link(b, page: Page, row: dict) -> None:
    page.blocks.append(Block(kind="img", src=row["id"], alt=row["caption"], style="rel" if page.base else None))


def _picture(b, fault: str, page: Page, host: int, path: str, fmt: str = "jpg", size=None, **route) -> dict:
    w, h = size or (b.rng.randrange(200, 600), b.rng.randrange(150, 500))
    d = b.drawing(w, h)
    status = 429 if route.get("throttle") else 200
    row = b.serve_picture(host, path, d, render(d), fmt, route=route, status=status, **_common(b, fault, page, d))
    _link(b, page, row)
    return row


def _plant(b, fault: str, page: Page, n: int) -> None:
    host, other = page.host, (page.host + 1) % b.cfg.hosts
    if fault in _HEADER_FAULTS:
        _picture(b, fault, page, host, b.path(host, "jpg"), headers=[["X-Robots-Tag", _HEADER_FAULTS[fault]]])
    elif fault == "retry_429":
        _picture(b, fault, page, host, f"/img/popular-{n}.jpg", throttle=1, headers=_retry_after(b))
    elif fault == "slow":
        _picture(b, fault, page, host, f"/img/slow-{n}.jpg", delay=b.cfg.slow_delay)
    elif fault == "image_as_html":
        _picture(b, fault, page, host, f"/img/view-{n}.jpg", ctype=_HTML)
    elif fault == "truncated":
        w, h = b.rng.randrange(300, 700), b.rng.randrange(300, 600)
        d = b.drawing(w, h)
        img = render(d)
        data = flt.truncated(encode(img, "jpg", 90))
        row = b.serve_picture(
            host, f"/img/partial-{n}.jpg", d, img, "jpg", route={"body": data}, **_common(b, fault, page, d)
        )
        _link(b, page, row)
    elif fault == "tiny":
        _picture(b, fault, page, host, f"/static/icons/icon-{n}-16.png", fmt="png", size=(16, 16))
    elif fault == "robots_private":
        _picture(b, fault, page, host, f"/private/img-{n}.jpg")
    elif fault == "robots_agent":
        _picture(b, fault, page, 0, f"/no-wit/img-{n}.jpg")
    elif fault in ("redirect_301", "redirect_302"):
        target_host = host if fault == "redirect_301" else other
        w, h = b.rng.randrange(200, 600), b.rng.randrange(150, 500)
        d = b.drawing(w, h)
        target = b.serve_picture(target_host, b.path(target_host, "png"), d, render(d), "png", ref="redirect")
        status = int(fault[-3:])
        path = f"/go/{n}-{status}.jpg"
        location = f"http://{placeholder(target_host)}{target['path']}"
        b.route(host, path, body=None, ctype=_HTML, status=status, headers=[["Location", location]])
        keep = ("label", "colour", "shape", "texture", "background", "size", "format", "width", "height")
        values = {k: target[k] for k in keep} | _common(b, fault, page, d)
        _link(b, page, b.row(host, path, status=status, target=target["id"], content_type=None, **values))
    elif fault == "redirect_loop":
        d = b.drawing(300, 300)
        a, z = f"/loop/{n}-a.jpg", f"/loop/{n}-b.jpg"
        # One hop root-relative, the other absolute: a client must resolve both to see the loop.
        b.route(host, a, body=None, ctype=_HTML, status=302, headers=[["Location", z]])
        b.route(host, z, body=None, ctype=_HTML, status=302, headers=[["Location", f"http://{placeholder(host)}{a}"]])
        row_a = b.row(host, a, status=302, **_common(b, fault, page, d))
        row_z = b.row(host, z, status=302, ref="redirect", fault=fault, target=row_a["id"])
        row_a["target"] = row_z["id"]
        _link(b, page, row_a)
    else:
        _plant_bytes(b, fault, page, host, n)


def _plant_bytes(b, fault: str, page: Page, host: int, n: int) -> None:
    """Faults whose body is not a picture at all: error statuses, HTML, garbage, the bomb."""
    d = b.drawing(300, 300)  # only for the caption: these URLs never yield this picture
    values = _common(b, fault, page, d)
    if fault == "http_404":
        row = b.row(host, f"/img/gone-{n}.jpg", status=404, **values)  # not routed: the server's 404
    elif fault == "always_429":
        path = f"/img/busy-{n}.jpg"
        b.route(host, path, body=None, ctype=_HTML, throttle=-1, headers=_retry_after(b))
        row = b.row(host, path, status=429, content_type=_HTML, **values)
    else:
        path, status, ctype, fmt, size = {
            "http_500": (f"/img/error-{n}.png", 500, _HTML, None, None),
            "html_as_jpg": (f"/img/photo-{n}-large.jpg", 200, _HTML, None, None),
            "corrupt": (f"/img/scan-{n}.png", 200, CONTENT_TYPES["png"], "png", (640, 480)),
            "bomb": (f"/img/panorama-{n}.png", 200, CONTENT_TYPES["png"], "png", (b.cfg.bomb_side,) * 2),
        }[fault]
        if fault == "http_500":
            body = flt.error_page(500, "Internal Server Error")
        elif fault == "html_as_jpg":
            body = _VIEWER
        elif fault == "corrupt":
            body = flt.corrupt_png(*size, b.rng)
        else:
            body = flt.bomb_png(b.cfg.bomb_side)
        b.route(host, path, body=body, ctype=ctype, status=status)
        width, height = size or (None, None)
        digest = hashlib.sha256(body).hexdigest()
        row = b.row(
            host, path, status=status, content_type=ctype, format=fmt, width=width, height=height, bytes=len(body),
            sha256=digest, **values,
        )  # fmt: skip
    _link(b, page, row)
