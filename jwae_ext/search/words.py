"""Which words of a text query the run knows.

A word is known when the run's input vocabulary has it (``word in vocab``: the training words
and, with pretrained word vectors, the vectors' words); a word it does not have is encoded as
``<unk>``.
"""

from __future__ import annotations

from jwae_ext.data import Vocabulary, tokenize


def query_words(vocab: Vocabulary, query: str) -> tuple[list[str], list[str]]:
    """The known and the unknown words of ``query`` (tokens with a letter or digit; punctuation
    is neither), each in order of first appearance, without repeats."""
    known: dict[str, None] = {}
    unknown: dict[str, None] = {}
    for token in tokenize(query):
        if any(ch.isalnum() for ch in token):
            (known if token in vocab else unknown)[token] = None
    return list(known), list(unknown)
