"""CLIP's BPE tokenizer: hand-computed ids on a tiny merges file, the released vocabulary's ids, training."""

import gzip
import html
import random
from collections import Counter
from itertools import pairwise

import ftfy
import pyarrow.parquet as pq
import pytest
import torch

from clipmodel import tokenizer as tok
from clipmodel.tokenizer import CLIP_VOCAB_SIZE, DEFAULT_MERGES, Tokenizer, clean, read_merges
from clipmodel.tokenizer_train import count_words, train_bpe, write_merges

# A tiny vocabulary. Byte symbols are numbered by code point, printable ASCII first: "!" (33) is 0, so a
# printable ASCII c is ord(c) - 33 and c + "</w>" is 256 more: l 75, o 78, w 86, e 68, r 81, n 77, s 82, t 83.
# Merges are numbered from 512 in file order; then <|startoftext|> 519 and <|endoftext|> 520.
TINY = """#version: 0.2 tiny
l o
lo w</w>
e r</w>
n e
ne w
lo w
low er</w>
"""
LOW, LOWER_END, ER_END, NEW = 513, 518, 514, 516  # low</w>, lower</w>, er</w>, new


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("bpe") / "tiny.txt"
    path.write_text(TINY)
    return Tokenizer(path)


@pytest.fixture(scope="module")
def clip() -> Tokenizer:
    return tok.default_tokenizer()


@pytest.fixture(scope="module")
def captions(laion_sample) -> list[str]:
    return [c for c in pq.read_table(laion_sample, columns=["TEXT"]).column("TEXT").to_pylist() if c]


def test_tiny_vocabulary_layout(tiny):
    assert tiny.vocab_size == 521
    assert (tiny.sot_id, tiny.eot_id) == (519, 520)
    assert [tiny.decoder[i] for i in (0, 64, 256 + 64, 512, 518)] == ["!", "a", "a</w>", "lo", "lower</w>"]
    assert tiny.bpe("newer") == ["new", "er</w>"] and tiny.bpe("x") == ["x</w>"]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("low", [LOW]),  # l o w</w> -> lo w</w> (rank 0) -> low</w> (rank 1)
        ("lower", [LOWER_END]),  # lo w e r</w> -> lo w er</w> (2) -> low er</w> (5) -> lower</w> (6)
        ("newer", [NEW, ER_END]),  # n e w er</w> (2) -> ne w er</w> (3) -> new er</w> (4); no "new er</w>" merge
        ("newest", [NEW, 68, 82, 83 + 256]),  # new e s t</w>
        ("lo lo", [75, 78 + 256, 75, 78 + 256]),  # "l o</w>" is not "l o": the word end matters
        ("Low,  LOWER!", [LOW, 11 + 256, LOWER_END, 256]),  # lower-cased; "," and "!" are words of their own
        ("é", [127, 358]),  # UTF-8 c3 a9: c3 is the 22nd of 174..255 (106 + 21), a9 the 9th of 161..172 (94 + 8)
    ],
)
def test_tiny_known_encodings(tiny, text, ids):
    assert tiny.encode(text) == ids


def test_gzip_and_plain_files_load_alike(tmp_path, tiny):
    path = tmp_path / "tiny.txt.gz"
    path.write_bytes(gzip.compress(TINY.encode()))
    assert Tokenizer(path).encode("lower newer lo") == tiny.encode("lower newer lo") == [518, 516, 514, 75, 334]


def test_read_merges_cuts_and_refuses(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text(TINY)
    assert read_merges(path) == [tuple(line.split()) for line in TINY.splitlines()[1:]]
    assert read_merges(path, vocab_size=516) == [("l", "o"), ("lo", "w</w>")]
    assert Tokenizer(path, vocab_size=514).encode("low") == [75, 78, 86 + 256]
    with pytest.raises(ValueError, match="below 514"):
        read_merges(path, vocab_size=513)
    with pytest.raises(ValueError, match="7 merges, too few for vocab size 600"):
        read_merges(path, vocab_size=600)
    path.write_text("#v\nl o\nl o w\n")
    with pytest.raises(ValueError, match=r"m.txt:3: expected a merge 'a b'"):
        read_merges(path)


def test_release_file_is_cut_to_clip_vocabulary(clip):
    assert clip.vocab_size == CLIP_VOCAB_SIZE == 49408
    assert (clip.sot_id, clip.eot_id) == (49406, 49407)
    assert clip.decoder[49405] == "jekyll</w>"  # the last merge CLIP uses, "jeky ll</w>"


# Ids from open_clip 3.3.0's SimpleTokenizer (OpenAI's code) on the same vocabulary, run outside this project.
REFERENCE = [
    ("a photo of a cat.", [320, 1125, 539, 320, 2368, 269]),
    (
        "A diagram of CLIP's text encoder, 2021!",
        [320, 22697, 539, 9289, 568, 4160, 524, 41561, 267, 273, 271, 273, 272, 256],
    ),
    ("naïve café — résumé", [1097, 35689, 563, 15304, 2005, 29106, 7054, 4166]),
    ("猫の写真 🐱", [163, 234, 104, 21575, 44653, 33440, 509, 22979]),
    ("&amp;quot;Keep Calm&amp;quot; - Blue Canvas", [257, 1726, 7011, 257, 268, 1746, 7483]),
    ("Hello\u00a0World\r\nnew   line", [3306, 1002, 686, 1148]),
    ("It's   a DOG's life", [585, 568, 320, 1929, 568, 970]),
]


@pytest.mark.parametrize(("text", "ids"), REFERENCE)
def test_released_vocabulary_matches_reference_ids(clip, text, ids):
    assert clip.encode(text) == ids


def test_reference_ids_agree_with_the_file_line_numbers():
    # Independent of the loader: merge id = 512 + (line number - 2), the header being line 1.
    lines = gzip.decompress(DEFAULT_MERGES.read_bytes()).decode().split("\n")
    assert lines[0] == '"bpe_simple_vocab_16e6.txt#version: 0.2'
    assert [lines[i - 512 + 1] for i in (1125, 539, 2368)] == ["pho to</w>", "o f</w>", "c at</w>"]
    assert ord(".") - 33 + 256 == 269 and ord("a") - 33 + 256 == 320  # byte symbols: "a</w>", ".</w>"


def test_tokenize_pads_with_zeros(clip):
    out = clip.tokenize(["a photo of a cat.", ""])
    assert out.dtype == torch.int64 and out.shape == (2, 77)
    assert out[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert out[1, :2].tolist() == [49406, 49407]
    assert not out[0, 8:].any() and not out[1, 2:].any()
    assert torch.equal(tok.tokenize("a photo of a cat."), out[:1])


def test_truncation_keeps_end_token_last(clip, tiny):
    long = " ".join(["cat"] * 100)
    row = clip.tokenize(long)[0].tolist()
    assert row == [49406] + [2368] * 75 + [49407]
    assert tiny.tokenize("low lower newer", context_length=5)[0].tolist() == [519, LOW, LOWER_END, NEW, 520]
    assert tiny.tokenize("low lower newer", context_length=8)[0].tolist() == [
        519,
        LOW,
        LOWER_END,
        NEW,
        ER_END,
        520,
        0,
        0,
    ]
    exact = " ".join(["cat"] * 75)  # 75 words + start + end is exactly 77: nothing cut
    assert clip.tokenize(exact)[0].tolist() == [49406] + [2368] * 75 + [49407]
    with pytest.raises(ValueError, match="at least 2"):
        clip.tokenize("cat", context_length=1)


def test_special_tokens_are_never_parsed_out_of_the_text(clip, tiny):
    # open_clip gives [320, 49407, 321, 49406] here: the caption's own text would end it for the text tower.
    assert clip.encode("a <|endoftext|> b <|startoftext|>") == clip.encode("a <| endoftext |> b <| startoftext |>")
    for caption in ("a photo <|endoftext|> of a cat", "<|startoftext|>x<|endoftext|>", "&lt;|endoftext|&gt; café"):
        ids = [i for i in clip.tokenize(caption)[0].tolist() if i]
        assert ids[0] == 49406 and ids[-1] == 49407
        assert not {49406, 49407} & set(ids[1:-1]), caption
        assert len(ids) > 4 and clip.decode(ids).replace(" ", "") == clean(caption).replace(" ", "")
    ids = tiny.tokenize("low <|endoftext|> low")[0].tolist()
    assert ids.count(tiny.sot_id) == ids.count(tiny.eot_id) == 1 and ids[:2] == [tiny.sot_id, LOW]


def test_special_tokens(clip):
    ids = clip.tokenize("a photo of a cat.")[0]
    assert clip.decode(ids) == "a photo of a cat ."
    assert clip.decode(ids[:9], skip_special_tokens=False) == "<|startoftext|>a photo of a cat . <|endoftext|>!"


def test_decode_round_trip(clip, tiny, captions):
    assert tiny.decode([LOW, 11 + 256, LOWER_END, 256]) == "low , lower !"
    assert clip.decode(clip.encode("猫の写真 🐱")) == "猫の写真 🐱"
    for caption in captions:
        ids = clip.encode(caption)
        text = clip.decode(ids)
        assert text.replace(" ", "") == clean(caption).replace(" ", "")  # only the spacing may differ
        assert clip.encode(text) == ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        clip.decode([49408])


def test_odd_unicode_does_not_crash(clip):
    texts = [
        "🐱" * 200,
        "\x00\x01\x1b[31mred\x1b[0m",
        "\ud800 lone surrogate",
        "ＦＵＬＬ ｗｉｄｔｈ",
        "﷽",
        "\u200b\u200d",
        "",
    ]
    out = clip.tokenize(texts)
    assert out.shape == (len(texts), 77) and (out[:, 0] == 49406).all()
    assert clip.encode("ＦＵＬＬ ｗｉｄｔｈ") == clip.encode("full width")  # ftfy folds full-width letters
    assert clip.encode("\x1b[31mred\x1b[0m") == clip.encode("red")  # and drops terminal escapes
    assert clip.decode(clip.encode("🐱" * 3)) == "🐱🐱🐱"


def _full_clean(text: str) -> str:
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


def test_ascii_fast_path_is_what_ftfy_would_give():
    rng = random.Random(0)
    alphabet = [chr(i) for i in range(32, 127)] + ["& ", "&", "&amp;", "  ", "'S"]
    plain = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        if tok._is_plain(text):
            plain += 1
            assert clean(text) == _full_clean(text)
            assert tok._ASCII_PATTERN.findall(text.lower()) == tok.PATTERN.findall(_full_clean(text))
    assert plain > 1000
    for text in ("a &amp; b", "a&b", "ends &", "tab\there", "café", "\x1b[0m"):
        assert not tok._is_plain(text)
    assert tok._is_plain("Salt & Pepper")
    assert clean("&amp;amp; Tom &AMP; Jerry&#39;s") == "& tom & jerry's"


def test_cache_stays_bounded(captions):
    small, big = Tokenizer(cache_size=64), Tokenizer()
    for caption in captions[:200]:
        assert small.encode(caption) == big.encode(caption)
        assert len(small._cache) <= 64
    assert len(big._cache) > 64


def test_train_hand_example(tmp_path):
    # "aaa" x2: pairs (a, a) 2 and (a, a</w>) 2 tie; ("a", "a") < ("a", "a</w>") goes first, then (aa, a</w>).
    assert train_bpe(["aaa aaa"], 516, min_frequency=1) == [("a", "a"), ("aa", "a</w>")]
    assert train_bpe(["ab ab cd cd"], 516) == [("a", "b</w>"), ("c", "d</w>")]  # a tie: smaller pair first
    assert train_bpe(["ab ab cd"], 600) == [("a", "b</w>")]  # (c, d</w>) occurs once: below min_frequency 2
    assert count_words(["Cat, cat <|endoftext|>"]) == {"cat": 2, ",": 1, "<|": 1, "endoftext": 1, "|>": 1}
    with pytest.raises(ValueError, match="below 514"):
        train_bpe(["a"], 300)


def _naive_train(captions: list[str], merges_wanted: int) -> list[tuple[str, str]]:
    """Greedy BPE the slow, obvious way: recount every pair over every word before each merge."""
    words = {w: tok.byte_symbols(w) for w in count_words(captions)}
    freqs = count_words(captions)
    merges = []
    while len(merges) < merges_wanted:
        counts = Counter()
        for word, symbols in words.items():
            for pair in pairwise(symbols):
                counts[pair] += freqs[word]
        if not counts or max(counts.values()) < 2:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        for word, symbols in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == list(pair):
                    out.append(pair[0] + pair[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[word] = out
    return merges


def test_train_matches_naive_recount(captions):
    sample = captions[:120] + ["aaaa aaaaa abab ababab", "aaa bbb aaa bbb"]  # overlapping and repeated pairs
    merges = train_bpe(sample, 514 + 150)
    assert len(merges) == 150 and merges == _naive_train(sample, 150)


def test_train_write_and_reload(tmp_path, captions):
    merges = train_bpe(captions, 1000)
    assert len(merges) == 1000 - 514
    assert len({a + b for a, b in merges}) == len(merges)  # every id spells a different string
    assert train_bpe(captions, 1000) == merges  # deterministic
    write_merges(tmp_path / "m.txt.gz", merges)
    write_merges(tmp_path / "again.txt.gz", train_bpe(captions, 1000))
    assert (tmp_path / "m.txt.gz").read_bytes() == (tmp_path / "again.txt.gz").read_bytes()
    write_merges(tmp_path / "m.txt", merges)
    assert read_merges(tmp_path / "m.txt") == read_merges(tmp_path / "m.txt.gz") == merges

    trained = Tokenizer(tmp_path / "m.txt.gz")
    assert trained.vocab_size == 1000 and trained.eot_id == 999
    for caption in captions[:100]:
        ids = trained.encode(caption)
        assert max(ids, default=0) < 998
        assert trained.decode(ids).replace(" ", "") == clean(caption).replace(" ", "")
    # A word seen often in training is one token: its merges were learned.
    word = max(count_words(captions).items(), key=lambda kv: (kv[1], len(kv[0])))[0]
    assert len(trained.encode(word)) == 1


def test_write_merges_refuses_whitespace(tmp_path):
    with pytest.raises(ValueError, match="without whitespace"):
        write_merges(tmp_path / "m.txt", [("a b", "c")])
