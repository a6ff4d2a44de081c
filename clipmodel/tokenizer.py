"""CLIP's byte-level BPE tokenizer: the released OpenAI CLIP tokenizer's ids, fast on batches of captions.

Behaves as OpenAI's `simple_tokenizer.py` (also open_clip's `SimpleTokenizer`): ftfy + double HTML unescape +
whitespace collapse + lower-case, the same pre-tokenizer, bytes mapped to printable characters, `</w>` on each
word's last symbol, merges applied lowest rank first, `<|startoftext|>` ... `<|endoftext|>` around the text and
zero padding to 77 ids. Written here, not copied; the ids are checked against open_clip's tokenizer in the tests.

One deliberate difference: the release's pre-tokenizer matches `<|startoftext|>` and `<|endoftext|>` in the text
itself, so a caption holding that literal text gets the special id, and the text tower, which reads out at the
end token, ignores what follows. Captions are untrusted web text: here the special ids are only ever the ones
`tokenize` puts around the text, and the literal text is tokenized as any other.

The default merges file, `bpe_simple_vocab_16e6.txt.gz` beside this module, is the one OpenAI released with CLIP
(MIT licence, Copyright (c) 2021 OpenAI), vendored unchanged from the `open_clip_torch` 3.3.0 wheel (MIT licence,
open_clip authors); sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a. Released OpenAI CLIP
checkpoints need exactly these ids.
"""

import functools
import gzip
import html
import os
import re
from collections.abc import Iterable, Sequence
from itertools import islice, pairwise
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

DEFAULT_MERGES = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
SOT = "<|startoftext|>"  # open_clip spells it <start_of_text>; same id, 49406 in CLIP's vocabulary
EOT = "<|endoftext|>"  # open_clip: <end_of_text>; 49407
WORD_END = "</w>"
N_BYTES = 256
MIN_VOCAB_SIZE = 2 * N_BYTES + 2  # every byte alone and word-final, and the two special tokens: no merges yet
CLIP_VOCAB_SIZE = 49408
# The release reads merges[1 : 49152 - 256 - 2 + 1] of its file, which holds far more; a header naming that file
# gets the same cut when no vocab size is asked for.
_RELEASE_HEADER = "bpe_simple_vocab_16e6"
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
# PATTERN restricted to lower-cased ASCII without control characters, where \p{L} is [a-z], \p{N} is [0-9] and the
# only whitespace is " ": the stdlib engine runs it ~2.5x as fast (equivalence is tested on random text).
_ASCII_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ a-z0-9]+""")


@functools.cache
def bytes_to_unicode() -> tuple[str, ...]:
    """The printable character standing for each byte 0..255: itself if printable Latin-1, else 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(N_BYTES):
        if b in printable:
            chars[b] = chr(b)
        else:  # whitespace and control bytes would break "a b" merge lines, so they move past Latin-1
            chars[b] = chr(N_BYTES + extra)
            extra += 1
    return tuple(chars[b] for b in range(N_BYTES))


def _is_plain(text: str) -> bool:
    """True if ftfy.fix_text and two html.unescape leave `text` unchanged, proven cheaply.

    Printable ASCII has no mojibake, ligatures, wide or curly characters, line breaks, terminal escapes or control
    characters, which is all ftfy changes besides HTML entities; an entity needs "&" followed by something other
    than a space, for ftfy and for html.unescape. ftfy costs ~100 us a caption; this check well under 1.
    """
    if not (text.isascii() and text.isprintable()):
        return False
    return "&" not in text or "&" not in text.replace("& ", "")


def clean(text: str) -> str:
    """The release's text cleanup: ftfy.fix_text, HTML unescape twice, whitespace collapsed, stripped, lower-cased."""
    if not _is_plain(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    # str.split() also splits on \x1c-\x1f, which regex's \s does not; ftfy and html.unescape remove those first.
    return " ".join(text.split()).lower()


def pretokenize(text: str) -> list[str]:
    """The words BPE sees, in order: cleaned text split by the release's pattern (less its special tokens)."""
    if _is_plain(text):
        # Spaces only separate pattern matches, so collapsing them first would change nothing.
        return _ASCII_PATTERN.findall(text.lower())
    return PATTERN.findall(clean(text))


def byte_symbols(word: str) -> list[str]:
    """`word` as BPE's initial symbols: one character per UTF-8 byte, the last one marked with `</w>`."""
    if word.isascii() and word.isprintable() and " " not in word:
        symbols = list(word)  # bytes 0x21..0x7e stand for themselves
    else:
        table = bytes_to_unicode()
        symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += WORD_END
    return symbols


def _open_text(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def read_merges(path: str | os.PathLike, vocab_size: int | None = None) -> list[tuple[str, str]]:
    """The merges of a file in the public format (header line, then "a b" per line; gzip'd or plain), in rank order.

    vocab_size None: all of them, except for the released file (its header names it), cut to CLIP's 49,408.
    Otherwise the first vocab_size - 514; ValueError if the file has fewer or a line is not two symbols.
    """
    path = Path(path)
    text = _open_text(path)
    header = text.partition("\n")[0]
    if vocab_size is None and _RELEASE_HEADER in header:
        vocab_size = CLIP_VOCAB_SIZE
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab size {vocab_size} is below {MIN_VOCAB_SIZE} (2 x 256 bytes + 2 special tokens)")
    # Splitting only the lines needed: the released file has 262,145 lines, CLIP uses 48,895 of them.
    limit = -1 if vocab_size is None else vocab_size - MIN_VOCAB_SIZE + 1
    body = text.split("\n", limit)[1:]
    if limit != -1 and len(body) == limit:
        body.pop()  # the unsplit rest of the file
    while body and not body[-1].strip():
        body.pop()
    wanted = len(body) if vocab_size is None else vocab_size - MIN_VOCAB_SIZE
    if wanted > len(body):
        raise ValueError(f"{path}: {len(body)} merges, too few for vocab size {vocab_size} (needs {wanted})")
    merges = []
    for number, line in enumerate(body[:wanted], start=2):
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"{path}:{number}: expected a merge 'a b', got {line[:80]!r}")
        merges.append((pair[0], pair[1]))
    return merges


class Tokenizer:
    """CLIP's BPE over one merges file, remembering the ids of the words it has seen (up to `cache_size` of them).

    Loads in ~0.1 s; give each worker process its own.
    """

    def __init__(
        self,
        merges_path: str | os.PathLike | None = None,
        vocab_size: int | None = None,
        cache_size: int = 1 << 18,
    ):
        merges = read_merges(merges_path or DEFAULT_MERGES, vocab_size)
        # The release lists byte symbols by code point (printable Latin-1 first), not by byte value.
        chars = sorted(bytes_to_unicode())
        self._joined = [a + b for a, b in merges]  # by rank: what each merge makes
        vocab = chars + [c + WORD_END for c in chars] + self._joined + [SOT, EOT]
        self.decoder: list[str] = vocab
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab)), strict=True))  # later duplicates win
        self.merges = merges
        self.ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges)), strict=True))
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self._cache_size = max(cache_size, 2)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._byte_of = {c: b for b, c in enumerate(bytes_to_unicode())}
        self._init_id_tables()

    def _init_id_tables(self) -> None:
        """BPE runs on symbol ids, each symbol being the id the encoder gives its string, as the release looks up.

        A pair (a, b) is the int a * vocab_size + b: ints hash and compare several times faster than (str, str).
        """
        encoder, width, table = self.encoder, self.vocab_size, bytes_to_unicode()
        self._byte_ids = bytes(encoder[c] for c in table)  # a bytes.translate table: byte -> id, all below 256
        self._end_ids = [encoder[c + WORD_END] for c in table]  # byte -> id of the same byte ending a word
        self._made = [encoder[joined] for joined in self._joined]  # rank -> id of the symbol that merge makes
        self._pair_rank: dict[int, int] = {}
        for (first, second), rank in self.ranks.items():
            a, b = encoder.get(first), encoder.get(second)
            if a is not None and b is not None:  # else it can never apply: no word holds a symbol out of vocabulary
                self._pair_rank[a * width + b] = rank

    def _bpe_ids(self, data: bytes) -> list[int]:
        """The ids of one word (its UTF-8 bytes) after merging adjacent symbols, the lowest-ranked known pair first,
        every occurrence left to right, until no known pair is left."""
        ids = list(data.translate(self._byte_ids))
        ids[-1] = self._end_ids[data[-1]]
        get, made, never, width = self._pair_rank.get, self._made, len(self._made), self.vocab_size
        # ranks[i] is the rank of the pair (ids[i], ids[i + 1]). A merge changes only its two neighbours' entries,
        # and the scans (min, index, in) run in C.
        ranks = [get(a * width + b, never) for a, b in pairwise(ids)]
        while ranks:
            rank = min(ranks)
            if rank == never:
                break
            new = made[rank]
            at = ranks.index(rank)
            while True:
                # A pair touching the new symbol cannot be this pair again, so any other entry equal to `rank` is a
                # later occurrence in the word as it was: merged left to right, without overlap, as the release.
                ids[at : at + 2] = (new,)
                del ranks[at]
                if at:
                    ranks[at - 1] = get(ids[at - 1] * width + new, never)
                if at < len(ranks):
                    ranks[at] = get(new * width + ids[at + 1], never)
                if rank not in ranks:
                    break
                at = ranks.index(rank)
        return ids

    def bpe(self, word: str) -> list[str]:
        """The symbols BPE splits one pre-token into, e.g. "lower" -> ["low", "er</w>"] (for reading, not speed)."""
        return [self.decoder[i] for i in self._bpe_ids(word.encode("utf-8"))]

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token, remembered. The cache keeps its newer half when full: bounded, amortized O(1)."""
        ids = tuple(self._bpe_ids(word.encode("utf-8")))
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache = self._cache = dict(islice(cache.items(), len(cache) // 2, None))
        cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens."""
        ids: list[int] = []
        cache = self._cache
        for word in pretokenize(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._word_ids(word)
                cache = self._cache  # may have been replaced when it filled up
            ids += word_ids
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, each `</w>` read as a space.

        skip_special_tokens: leave out <|startoftext|>, stop at <|endoftext|> (so padding after it is ignored) and
        drop the trailing space. False: exactly the release's decode, special tokens and padding ("!") spelled out.
        """
        if hasattr(ids, "tolist"):  # a tensor or array row
            ids = ids.tolist()
        pieces = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if skip_special_tokens and i in (self.sot_id, self.eot_id):
                if i == self.eot_id:
                    break
                continue
            pieces.append(self.decoder[i])
        byte_of = self._byte_of
        raw = bytes(byte_of[c] for c in "".join(pieces))
        text = raw.decode("utf-8", errors="replace").replace(WORD_END, " ")
        return text.rstrip(" ") if skip_special_tokens else text

    def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """(N, context_length) int64 ids: start token, text, end token, zeros; a long text is cut, ending in EOT."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        sot, eot, room = self.sot_id, self.eot_id, context_length - 1
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            ids.insert(0, sot)
            if len(ids) >= room:
                del ids[room:]
            ids.append(eot)
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The tokenizer of released CLIP models (the vendored merges file, 49,408 ids), made once per process."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """`default_tokenizer().tokenize(texts, context_length)`: what CLIP's text tower takes, (N, context_length)."""
    return default_tokenizer().tokenize(texts, context_length)
