"""The pictures of a page: new ones (plain, figure, srcset), duplicates and near-duplicates, and eval leaks."""

import numpy as np
from PIL import Image

from synthweb.builder import ASPECTS, WebBuilder
from synthweb.draw import Drawing, near_copy, render
from synthweb.site import Page
from synthweb.spec import CONTENT_TYPES


def add_picture(b: WebBuilder, page: Page) -> None:
    """One image of a page: a new picture (plain, figure or srcset), or a duplicate of a recent one."""
    host, folder = page.base or (
        page.host if b.rng.random() < 0.75 else b.rng.randrange(b.cfg.hosts),
        None,
    )
    r = b.rng.random()
    if r < 0.06 and b.recent:
        return _duplicate(b, page, host, folder, exact=True)
    if r < 0.12 and b.recent:
        return _duplicate(b, page, host, folder, exact=False)
    if r < 0.27:
        return _srcset(b, page, host, folder)
    w, h, large = b.dims()
    d = b.drawing(w, h)
    fmt = "jpg" if large else b.fmt()
    kind = "figure" if r < 0.45 else "img"
    figcaption = b.good_caption(d)["caption"] if kind == "figure" else None
    caption = b.caption(d, page.lang)
    row = b.serve_picture(
        host,
        b.path(host, fmt, folder),
        d,
        render(d),
        fmt,
        page=page.id,
        ref=kind,
        figcaption=figcaption,
        **caption,
    )
    page.blocks.append(b.block(kind, row, page, width=w if b.rng.random() < 0.5 else None, height=h))


def _duplicate(b: WebBuilder, page: Page, host: int, folder: str | None, exact: bool) -> None:
    orig_id, img, fmt = b.rng.choice(b.recent)
    orig = b.rows[orig_id]
    d = Drawing(orig["colour"], orig["shape"], orig["texture"], orig["background"], orig["size"], "photo", *img.size)
    caption = b.caption(d, page.lang)
    if exact:
        data = (b.out / f"hosts/{orig['host']}/{orig['path'].lstrip('/')}").read_bytes()
        path = b.path(host, fmt, folder)
        b.route(host, path, body=data, ctype=CONTENT_TYPES[fmt])
        orig["dup_group"] = orig["dup_group"] or b.group("dup")
        values = b.picture_values(d, img, fmt, data) | {"content_type": CONTENT_TYPES[fmt]}
        row = b.row(host, path, page=page.id, ref="img", dup_group=orig["dup_group"], **values, **caption)
    else:
        how = b.rng.choice(("requality", "resize", "crop"))
        copy = near_copy(img, how, np.random.default_rng(b.rng.getrandbits(32)))
        new_fmt = b.rng.choice([f for f in ("jpg", "webp", "png") if f != fmt]) if how == "requality" else fmt
        orig["near_dup_group"] = orig["near_dup_group"] or b.group("near")
        row = b.serve_picture(
            host,
            b.path(host, new_fmt, folder),
            d,
            copy,
            new_fmt,
            page=page.id,
            ref="img",
            near_dup_group=orig["near_dup_group"],
            **caption,
        )
    page.blocks.append(b.block("img", row, page))


def _srcset(b: WebBuilder, page: Page, host: int, folder: str | None) -> None:
    """An <img srcset> of three widths of one picture: rendered at the largest, which is the best candidate."""
    base = b.rng.choice((160, 200, 240, 280))
    aw, ah = b.rng.choice(ASPECTS)
    widths = (base, 2 * base, 3 * base)
    d = b.drawing(widths[-1], round(widths[-1] * ah / aw))
    big = render(d)
    fmt = b.rng.choice(("jpg", "webp"))
    caption = b.caption(d, page.lang)
    group, near = b.group("srcset"), b.group("near")
    ids = []
    for w in widths:
        img = big if w == widths[-1] else big.resize((w, round(w * ah / aw)), Image.Resampling.LANCZOS)
        row = b.serve_picture(
            host,
            b.path(host, fmt, folder),
            d,
            img,
            fmt,
            page=page.id,
            ref="srcset",
            srcset_group=group,
            srcset_width=w,
            srcset_best=w == widths[-1],
            near_dup_group=near,
            **caption,
        )
        ids.append((row["id"], w))
    page.blocks.append(b.block("srcset", b.rows[ids[1][0]], page, srcset=ids))


def add_leak(b: WebBuilder, page: Page, eval_row: dict) -> None:
    """A web image that is a near-copy of an eval image, for decontamination to find."""
    d = eval_row["drawing"]
    img = Image.open(b.out / eval_row["file"]).convert("RGB")
    copy = near_copy(img, b.rng.choice(("enlarge", "crop")), np.random.default_rng(b.rng.getrandbits(32)))
    host = page.base[0] if page.base else page.host
    folder = "/media" if page.base else None
    row = b.serve_picture(
        host,
        b.path(host, "jpg", folder),
        d,
        copy,
        "jpg",
        page=page.id,
        ref="img",
        eval_leak=eval_row["file"],
        **b.good_caption(d),
    )
    page.blocks.append(b.block("img", row, page))
