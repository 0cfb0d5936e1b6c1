"""How much of another dataset's captions a vocabulary knows: across datasets, every word a
model's vocabulary lacks reads as ``<unk>``."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Container, Iterable

from jwae_ext.data.vocab import tokenize

__all__ = ["is_word", "unknown_words"]


def is_word(token: str) -> bool:
    """Whether a :func:`~jwae_ext.data.vocab.tokenize` token is a word, not a punctuation mark
    (the tokenizer makes each punctuation mark a token of its own character)."""
    if len(token) > 1:
        return True
    category = unicodedata.category(token)
    return token == "_" or category[0] in "LNM"


def unknown_words(known: Container[str], captions: Iterable[str]) -> dict[str, float | int]:
    """The words of ``captions`` (tokenized as the vocabulary does, punctuation left out) that
    ``known`` lacks (a :class:`~jwae_ext.data.Vocabulary`, or any container of words): their
    count and % among the word tokens (``tokens``, ``unknown_tokens``, ``unknown_token_pct``)
    and among the distinct words (``words``, ``unknown_words``, ``unknown_word_pct``)."""
    counts = Counter(t for caption in captions for t in tokenize(caption) if is_word(t))
    if not counts:
        raise ValueError("jwae_ext: unknown_words needs captions with at least one word")
    unknown = {w: c for w, c in counts.items() if w not in known}
    tokens, unknown_tokens = sum(counts.values()), sum(unknown.values())
    return {
        "tokens": tokens,
        "unknown_tokens": unknown_tokens,
        "unknown_token_pct": 100.0 * unknown_tokens / tokens,
        "words": len(counts),
        "unknown_words": len(unknown),
        "unknown_word_pct": 100.0 * len(unknown) / len(counts),
    }
