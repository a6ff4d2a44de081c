"""Learn a CLIP-style BPE merges file from captions: the pre-tokenizer CLIP's tokenizer uses, greedy pair merges."""

import gzip
import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path

from clipmodel.tokenizer import MIN_VOCAB_SIZE, WORD_END, byte_symbols, bytes_to_unicode, pretokenize

HEADER = "#version: 0.2 (trained by wit-builder clipmodel.tokenizer_train)"


def count_words(captions: Iterable[str]) -> Counter[str]:
    """How often each pre-token occurs in `captions`, cleaned and split as the tokenizer does (a literal
    `<|endoftext|>` in a caption is three ordinary words, never a special token)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(pretokenize(caption))
    return counts


class _PairCounts:
    """Word types as symbol lists with their frequencies, and the count of each adjacent pair over all of them.

    Merging a pair touches only the words that hold it (`where`), so a merge costs what those words cost, not a
    pass over the corpus. The heap holds (-count, pair) entries; one whose count is no longer current is skipped.
    """

    def __init__(self, words: Counter[str]):
        self.words = [byte_symbols(w) for w in words]
        self.freqs = list(words.values())
        self.counts: Counter[tuple[str, str]] = Counter()
        self.where: dict[tuple[str, str], set[int]] = {}
        for index, (symbols, freq) in enumerate(zip(self.words, self.freqs, strict=True)):
            for pair in pairwise(symbols):
                self.counts[pair] += freq
                self.where.setdefault(pair, set()).add(index)
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def best(self, skip: Callable[[tuple[str, str]], bool]) -> tuple[tuple[str, str], int] | None:
        """The most frequent pair not skipped, and its count; ties go to the smallest pair (a, b) as strings."""
        while self.heap:
            negative, pair = heapq.heappop(self.heap)
            if self.counts.get(pair) == -negative and not skip(pair):
                return pair, -negative
        return None

    def merge(self, pair: tuple[str, str]) -> None:
        """Merge `pair` in every word that holds it, left to right without overlap, and update the pair counts."""
        first, second = pair
        merged = first + second
        delta: defaultdict[tuple[str, str], int] = defaultdict(int)  # net change per pair over all words
        where = self.where
        for index in where.pop(pair, ()):
            old = self.words[index]
            pairs = list(pairwise(old))
            occurrences = pairs.count(pair)
            if not occurrences:
                continue  # `where` keeps words that have since lost the pair
            freq = self.freqs[index]
            if occurrences == 1:  # the usual case: only the pair and its two neighbours change
                i = pairs.index(pair)
                new = [*old[:i], merged, *old[i + 2 :]]
                delta[pair] -= freq
                # Only pairs with the new symbol are new to the word: `where` lists it for the others already.
                if i:
                    delta[old[i - 1], first] -= freq
                    delta[old[i - 1], merged] += freq
                    where.setdefault((old[i - 1], merged), set()).add(index)
                if i + 2 < len(old):
                    delta[second, old[i + 2]] -= freq
                    delta[merged, old[i + 2]] += freq
                    where.setdefault((merged, old[i + 2]), set()).add(index)
            else:
                new = _merge_all(old, first, second)
                for p in pairs:
                    delta[p] -= freq
                for p in pairwise(new):
                    delta[p] += freq
                    if merged in p:
                        where.setdefault(p, set()).add(index)
            self.words[index] = new
        for p, change in delta.items():
            if change:
                count = self.counts[p] + change
                if count > 0:
                    self.counts[p] = count
                    heapq.heappush(self.heap, (-count, p))
                else:
                    self.counts.pop(p, None)


def _merge_all(symbols: list[str], first: str, second: str) -> list[str]:
    """`symbols` with every (first, second) merged, left to right without overlap ("a a a" -> "aa a")."""
    merged, out, i, n = first + second, [], 0, len(symbols)
    while i < n:
        if symbols[i] == first and i + 1 < n and symbols[i + 1] == second:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def train_bpe(
    captions: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, str]]:
    """Merges, in rank order, for a vocabulary of `vocab_size` ids: 2 x 256 byte symbols + merges + 2 specials.

    Greedy: the most frequent adjacent pair over all words (ties to the smallest pair, so the result is the same
    on every run), merged everywhere, repeated. A pair whose merge would spell a symbol already in the vocabulary
    is passed over, so every id spells a different string. Stops early, with fewer merges, once no pair occurs
    `min_frequency` times. `progress(n)` is called with the number of merges made so far, every 100.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab size {vocab_size} is below {MIN_VOCAB_SIZE} (2 x 256 bytes + 2 special tokens)")
    state = _PairCounts(count_words(captions))
    known = set(bytes_to_unicode()) | {c + WORD_END for c in bytes_to_unicode()}
    merges: list[tuple[str, str]] = []
    while len(merges) < vocab_size - MIN_VOCAB_SIZE:
        found = state.best(skip=lambda pair: pair[0] + pair[1] in known)
        if found is None or found[1] < min_frequency:
            break
        pair = found[0]
        merges.append(pair)
        known.add(pair[0] + pair[1])
        state.merge(pair)
        if progress and len(merges) % 100 == 0:
            progress(len(merges))
    return merges


def write_merges(path: str | os.PathLike, merges: Iterable[tuple[str, str]], header: str = HEADER) -> None:
    """Write merges in the public format (a header line, then "a b" per line); gzip'd when `path` ends in .gz.

    Written under a temporary name and renamed, so a reader never sees half a file; the gzip header carries no
    time, so the same merges give the same bytes.
    """
    path = Path(path)
    lines = [header]
    for first, second in merges:
        if not first or not second or any(c.isspace() for c in first + second):
            raise ValueError(f"merge symbols must be non-empty and without whitespace: {first!r} {second!r}")
        lines.append(f"{first} {second}")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
