"""Alt text the way the web writes it: templated English, French, German, Spanish, boilerplate, HTML entities."""

import random
import re
from html.entities import codepoint2name

from synthweb.spec import CAPTION_DECK, class_label

_TEXTURE_ADJ = {"solid": "solid", "striped": "striped", "dotted": "polka-dot", "checkered": "checkered"}
_TEXTURE_WITH = {
    "solid": "",
    "striped": " with stripes",
    "dotted": " with dots",
    "checkered": " with a checkered pattern",
}
_SIZE_ADJ = {"small": "small", "medium": "", "large": "large"}
_BACKGROUND = {"white": "white", "grey": "grey", "gradient": "gradient", "noise": "noisy"}

# {a} is "a"/"an" for what follows it; {size} may be empty. Apostrophes and ampersands are there on purpose: they
# become &#39; and &amp; in the HTML.
_ENGLISH = (
    "a photo of {a} {size} {colour} {shape} on a {bg} background",
    "{Texture} {colour} {shape} clipart",
    "{colour} {shape}",
    "{A} {texture} {colour} {shape}",
    "Illustration of {a} {colour} {shape}{with}",
    "Kid's drawing of {a} {colour} {shape}",
    "{Colour} {shape} & {bg} background - shapes & colours set",
    "close-up of {a} {size} {colour} {shape}",
    "{Colour} {shape} icon, {texture}",
    "Stock image: {a} {colour} {shape} isolated on a {bg} background",
    "Here's {a} {colour} {shape} I made",
    "HD wallpaper: {texture} {colour} {shape}",
)

# Word forms per language. Gendered forms are chosen by the noun's gender; every form is listed so that
# `mentioned_classes` can find a class however it was written.
_FR_SHAPES = {
    "circle": ("cercle", "m"),
    "square": ("carré", "m"),
    "triangle": ("triangle", "m"),
    "star": ("étoile", "f"),
    "hexagon": ("hexagone", "m"),
    "cross": ("croix", "f"),
}
_FR_COLOURS = {
    "red": ("rouge", "rouge"),
    "green": ("vert", "verte"),
    "blue": ("bleu", "bleue"),
    "yellow": ("jaune", "jaune"),
    "purple": ("violet", "violette"),
    "orange": ("orange", "orange"),
}
_DE_SHAPES = {
    "circle": ("Kreis", "m"),
    "square": ("Quadrat", "n"),
    "triangle": ("Dreieck", "n"),
    "star": ("Stern", "m"),
    "hexagon": ("Sechseck", "n"),
    "cross": ("Kreuz", "n"),
}
# (noun form for "in Rot", dative adjective after einem/einer)
_DE_COLOURS = {
    "red": ("Rot", "roten"),
    "green": ("Grün", "grünen"),
    "blue": ("Blau", "blauen"),
    "yellow": ("Gelb", "gelben"),
    "purple": ("Lila", "lila"),
    "orange": ("Orange", "orangefarbenen"),
}
_ES_SHAPES = {
    "circle": ("círculo", "m"),
    "square": ("cuadrado", "m"),
    "triangle": ("triángulo", "m"),
    "star": ("estrella", "f"),
    "hexagon": ("hexágono", "m"),
    "cross": ("cruz", "f"),
}
_ES_COLOURS = {
    "red": ("rojo", "roja"),
    "green": ("verde", "verde"),
    "blue": ("azul", "azul"),
    "yellow": ("amarillo", "amarilla"),
    "purple": ("morado", "morada"),
    "orange": ("naranja", "naranja"),
}

COLOUR_WORDS: dict[str, set[str]] = {
    c: {c}
    | set(_FR_COLOURS[c])
    | {_DE_COLOURS[c][0].lower(), _DE_COLOURS[c][1], _DE_COLOURS[c][1].removesuffix("en")}
    | set(_ES_COLOURS[c])
    for c in _FR_COLOURS
}
SHAPE_WORDS: dict[str, set[str]] = {
    s: {s, _FR_SHAPES[s][0], _DE_SHAPES[s][0].lower(), _ES_SHAPES[s][0]} for s in _FR_SHAPES
}

_BOILERPLATE = (
    "IMG_{n:04d}.JPG",
    "DSC{n:05d}.jpg",
    "image",
    "logo",
    "photo",
    "picture",
    "untitled",
    "img_{n}",
    "Screenshot 2021-03-{d:02d} at 10.{d:02d}.13",
    "banner",
    "thumbnail",
)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _tidy(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace(" ,", ",")


class CaptionWriter:
    """Writes captions in rotation through the templates, so a web of a few dozen images already uses them all."""

    def __init__(self, rng: random.Random, deck: tuple[tuple[str, int], ...] = CAPTION_DECK):
        self.rng = rng
        self.deck = deck
        self._turn: dict[str, int] = {}
        self._deck: list[str] = []

    def _next(self, key: str, n: int) -> int:
        i = self._turn.get(key, self.rng.randrange(n))
        self._turn[key] = i + 1
        return i % n

    def next_kind(self) -> str:
        if not self._deck:
            self._deck = [kind for kind, n in self.deck for _ in range(n)]
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def english(self, colour: str, shape: str, texture: str, background: str, size: str) -> str:
        template = _ENGLISH[self._next("en", len(_ENGLISH))]
        size_adj = _SIZE_ADJ[size]
        # "{a}" agrees with the word right after it, which depends on whether the size word is there.
        first_after_a = size_adj if "{a} {size}" in template and size_adj else colour
        if "{A} {texture}" in template:
            first_after_a = _TEXTURE_ADJ[texture]
        text = template.format(
            a=_article(first_after_a),
            A=_article(first_after_a).capitalize(),
            size=size_adj,
            colour=colour,
            Colour=colour.capitalize(),
            shape=shape,
            texture=_TEXTURE_ADJ[texture],
            Texture=_TEXTURE_ADJ[texture].capitalize(),
            bg=_BACKGROUND.get(background, background),
            **{"with": _TEXTURE_WITH[texture]},
        )
        return _tidy(text[0].upper() + text[1:] if self.rng.random() < 0.5 else text)

    def foreign(self, colour: str, shape: str, lang: str) -> str:
        i = self._next(lang, 3)
        if lang == "fr":
            noun, g = _FR_SHAPES[shape]
            adj = _FR_COLOURS[colour][g == "f"]
            un = "une" if g == "f" else "un"
            return (
                f"Image représentant {un} {noun} {adj}",
                f"{noun.capitalize()} {adj} sur fond dégradé",
                f"Photo d'{un} {noun} {adj}, vue de près",
            )[i]
        if lang == "de":
            noun, g = _DE_SHAPES[shape]
            colour_noun, adj = _DE_COLOURS[colour]
            art = "einer" if g == "f" else "einem"
            return (
                f"Ein Bild mit {art} {adj} {noun}",
                f"{noun} in {colour_noun}",
                f"Grüße aus der Formenwelt: {noun} in {colour_noun}",
            )[i]
        if lang == "es":
            noun, g = _ES_SHAPES[shape]
            adj = _ES_COLOURS[colour][g == "f"]
            un = "una" if g == "f" else "un"
            return (
                f"Foto de {un} {noun} {adj}",
                f"{noun.capitalize()} {adj} sobre fondo liso",
                f"Ilustración de {un} {noun} {adj}",
            )[i]
        raise ValueError(f"no templates for language {lang!r}")

    def boilerplate(self) -> str:
        template = _BOILERPLATE[self._next("boilerplate", len(_BOILERPLATE))]
        return template.format(n=self.rng.randrange(1, 9999), d=self.rng.randrange(1, 29))

    def title(self, colour: str, shape: str) -> str:
        return self.rng.choice((f"{colour} {shape}", f"{colour.capitalize()} {shape}", f"{shape} ({colour})"))


def mentioned_classes(text: str) -> set[str]:
    """Class labels whose colour and shape words (in any of the web's languages) both occur in `text`.

    Every caption describes one object, so for a good caption this is exactly its class.
    """
    words = set(re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)*", text.lower()))
    colours = [c for c, forms in COLOUR_WORDS.items() if words & {f.lower() for f in forms}]
    shapes = [s for s, forms in SHAPE_WORDS.items() if words & forms]
    return {class_label(c, s) for c in colours for s in shapes}


def named_class(text: str | None) -> str | None:
    """The one class a caption names, or None when it names none or several."""
    said = mentioned_classes(text or "")
    return next(iter(said)) if len(said) == 1 else None


def html_escape(text: str) -> str:
    """Escape for an HTML attribute or text node: &, <, >, quotes as &amp; &lt; &gt; &quot; &#39;, and every
    non-ASCII character as a named entity where HTML has one (&eacute;), else a numeric one."""
    out = []
    for ch in text:
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == '"':
            out.append("&quot;")
        elif ch == "'":
            out.append("&#39;")
        elif ord(ch) > 127:
            name = codepoint2name.get(ord(ch))
            out.append(f"&{name};" if name else f"&#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)
