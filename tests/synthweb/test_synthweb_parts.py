"""The synthetic web's parts on their own: vocabulary, drawing, captions, hostile bytes, robots, URL styles."""

import io
import random
import struct
import urllib.robotparser
import zlib
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

from pipeline.fetch.politeness import USER_AGENT_TOKEN
from synthweb import WebConfig, vocabulary
from synthweb.captions import CaptionWriter, html_escape, mentioned_classes
from synthweb.draw import Drawing, encode, near_copy, render
from synthweb.faults import bomb_png, corrupt_png, robots_txt, truncated
from synthweb.site import placeholder, ref
from synthweb.spec import CAPTION_DECK, CAPTION_KINDS, COLOURS, SHAPES, caption_deck, class_label, split_label


def test_held_out_classes_cover_every_colour_and_shape_once():
    vocab = vocabulary(0)
    assert len(vocab.classes) == len(COLOURS) * len(SHAPES) == 36
    assert len(vocab.held_out) == 6 and set(vocab.train).isdisjoint(vocab.held_out)
    assert set(vocab.train) | set(vocab.held_out) == set(vocab.classes)
    held = [split_label(c) for c in vocab.held_out]
    assert sorted(c for c, _ in held) == sorted(COLOURS)
    assert sorted(s for _, s in held) == sorted(SHAPES)
    assert vocabulary(0) == vocab
    assert any(vocabulary(seed).held_out != vocab.held_out for seed in range(1, 5))


@pytest.mark.parametrize(
    "kwargs",
    [{"pages": 2}, {"hosts": 0}, {"hosts": 5, "pages": 4}, {"images_per_page": 0}, {"bomb_side": 5000}],
)
def test_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        WebConfig(**kwargs)


def test_render_draws_the_colour_on_the_background():
    d = Drawing("blue", "square", "solid", "white", "large", width=300, height=200, seed=1)
    img = render(d)
    assert img.size == (300, 200) and img.mode == "RGB"
    px = np.asarray(img).reshape(-1, 3).astype(int)
    background = np.all(px > 235, axis=1)
    assert 0.2 < 1 - background.mean() < 0.8  # a large object, but not the whole picture
    mean = px[~background].mean(axis=0)
    assert np.abs(mean - COLOURS["blue"]).max() < 40  # shadow edges pull it a little
    assert np.array_equal(np.asarray(render(d)), np.asarray(img))  # same drawing, same pixels


@pytest.mark.parametrize("texture", ["solid", "striped", "dotted", "checkered", "shaded", "wavy"])
@pytest.mark.parametrize("background", ["white", "grey", "gradient", "noise", "dark", "clutter"])
def test_every_texture_and_background_renders(texture, background):
    img = render(Drawing("orange", "star", texture, background, "medium", width=64, height=48, seed=3))
    assert img.size == (64, 48)


@pytest.mark.parametrize("shape", SHAPES)
def test_sketch_is_an_outline_on_paper(shape):
    img = np.asarray(render(Drawing("red", shape, style="sketch", width=128, height=128, seed=2))).astype(int)
    ink = np.any(np.abs(img - [250, 248, 242]) > 30, axis=2)
    assert 0.01 < ink.mean() < 0.25  # lines, not a filled shape


@pytest.mark.parametrize(("fmt", "pil"), [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF")])
def test_encode_formats_round_trip(fmt, pil):
    img = render(Drawing("green", "circle", width=120, height=90, seed=5))
    data = encode(img, fmt, 80)
    back = Image.open(io.BytesIO(data))
    assert (back.format, back.size) == (pil, (120, 90))
    assert encode(img, fmt, 80) == data


def test_near_copies_change_size_or_nothing():
    img = render(Drawing("green", "circle", width=200, height=100, seed=5))
    rng = np.random.default_rng(0)
    assert near_copy(img, "requality", rng).size == (200, 100)
    w, h = near_copy(img, "resize", rng).size
    assert 120 <= w <= 170 and 60 <= h <= 85
    w, h = near_copy(img, "crop", rng).size
    assert 176 <= w < 200 and 88 <= h < 100
    assert near_copy(img, "enlarge", rng).size[0] > 200


def test_captions_name_their_class_in_every_language():
    writer = CaptionWriter(random.Random(0))
    for label in vocabulary(0).classes:
        colour, shape = split_label(label)
        for _ in range(12):  # every English template
            text = writer.english(colour, shape, "striped", "noise", "large")
            assert mentioned_classes(text) == {label}, text
        for lang in ("fr", "de", "es"):
            for _ in range(3):
                text = writer.foreign(colour, shape, lang)
                assert mentioned_classes(text) == {label}, text
    assert mentioned_classes(writer.boilerplate()) == set()


def test_caption_deck_deals_every_kind():
    writer = CaptionWriter(random.Random(1))
    kinds = [writer.next_kind() for _ in range(25)]
    assert set(kinds) == set(CAPTION_KINDS)
    assert kinds.count("good") == 14


def test_english_articles_agree():
    writer = CaptionWriter(random.Random(0))
    texts = [writer.english("orange", "hexagon", "solid", "white", "medium") for _ in range(12)]
    assert not any(" a orange" in t.lower() or t.lower().startswith("a orange") for t in texts)
    assert any(" an orange" in t.lower() or t.lower().startswith("an orange") for t in texts)


def test_html_escape_uses_entities():
    assert html_escape('Kid\'s "étoile" & <b>') == "Kid&#39;s &quot;&eacute;toile&quot; &amp; &lt;b&gt;"
    assert html_escape("№") == "&#8470;"  # no named entity: numeric


def test_bomb_is_a_small_valid_png_declaring_huge_dimensions():
    side = 30000
    data = bomb_png(side)
    assert len(data) < 200_000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    w, h, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (w, h, depth, colour_type) == (side, side, 1, 0)
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(data[12 : 16 + length])
    # The image data really inflates to side rows of (1 + side/8) bytes: stream it, never hold it.
    idat_len = struct.unpack(">I", data[33:37])[0]
    inflate, total = zlib.decompressobj(), 0
    stream = data[41 : 41 + idat_len]
    for i in range(0, len(stream), 8192):
        total += len(inflate.decompress(stream[i : i + 8192], 1 << 20))
        while inflate.unconsumed_tail:
            total += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
    assert inflate.eof and total == side * (1 + (side + 7) // 8)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_truncated_and_corrupt_images_do_not_decode():
    good = encode(render(Drawing("red", "cross", "striped", "noise", width=300, height=200, seed=1)), "jpg", 90)
    for data in (truncated(good), corrupt_png(64, 48, random.Random(0))):
        img = Image.open(io.BytesIO(data))  # the header is fine...
        assert img.size in ((300, 200), (64, 48))
        with pytest.raises((OSError, SyntaxError, ValueError, zlib.error)):
            img.load()  # ...the pixels are not


def test_robots_rules_per_agent():
    host0 = urllib.robotparser.RobotFileParser()
    host0.parse(robots_txt(0).splitlines())
    assert not host0.can_fetch("*", "http://h/private/x.jpg")
    assert host0.can_fetch("*", "http://h/no-wit/x.jpg")
    assert not host0.can_fetch(USER_AGENT_TOKEN, "http://h/private/x.jpg")
    assert not host0.can_fetch(USER_AGENT_TOKEN, "http://h/no-wit/x.jpg")
    assert host0.can_fetch(USER_AGENT_TOKEN, "http://h/img/x.jpg")
    assert not host0.can_fetch("CCBot", "http://h/img/x.jpg")
    host1 = urllib.robotparser.RobotFileParser()
    host1.parse(robots_txt(1).splitlines())
    assert host1.can_fetch(USER_AGENT_TOKEN, "http://h/no-wit/x.jpg")
    assert not host1.can_fetch(USER_AGENT_TOKEN, "http://h/private/x.jpg")


@pytest.mark.parametrize(
    ("target", "context", "style", "written"),
    [
        ((0, "/img/a.jpg"), (0, "/gallery"), "rel", "../img/a.jpg"),
        ((0, "/gallery/p-2.html"), (0, "/gallery"), "rel", "p-2.html"),
        ((0, "/"), (0, "/blog/2021/05"), "rel", "../../../"),
        ((0, "/"), (0, "/"), "rel", "./"),
        ((0, "/img/a.jpg"), (0, "/gallery"), "root", "/img/a.jpg"),
        ((1, "/img/a.jpg"), (0, "/gallery"), "rel", "http://{{host1}}/img/a.jpg"),
        ((1, "/img/a.jpg"), (0, "/gallery"), "proto", "//{{host1}}/img/a.jpg"),
        ((1, "/img/a.jpg"), (1, "/media"), "rel", "../img/a.jpg"),
    ],
)
def test_url_styles_resolve_to_their_target(target, context, style, written):
    assert ref(target, context, style) == written
    page = f"http://{placeholder(context[0])}{context[1].rstrip('/')}/page.html"
    assert urljoin(page, written) == f"http://{placeholder(target[0])}{target[1]}"


def test_class_label_round_trips():
    assert split_label(class_label("purple", "hexagon")) == ("purple", "hexagon")


def test_caption_mix_deals_the_kinds_asked_for_and_the_default_web_is_unchanged():
    assert caption_deck(None) == CAPTION_DECK
    assert "caption_mix" not in WebConfig().to_dict()  # the default web's files (and their hashes) stay as they were
    deck = caption_deck("good=2, mismatch=6")
    assert dict(deck) == dict(CAPTION_DECK) | {"good": 2, "mismatch": 6}
    writer = CaptionWriter(random.Random(0), deck)
    dealt = [writer.next_kind() for _ in range(sum(n for _, n in deck) * 3)]
    assert {k: dealt.count(k) for k in CAPTION_KINDS} == {k: 3 * n for k, n in deck}
    for bad in ("good=x", "nonsense=3", "good=0,non_english=0,boilerplate=0,empty=0,mismatch=0"):
        with pytest.raises(ValueError, match="caption_mix"):
            WebConfig(caption_mix=bad)
