"""Which words of a text query the run knows: the one place that decides it.

A word is known when the run's vocabulary has it (a word it does not have is encoded as
``<unk>``). When the input vocabulary is extended (pretrained word vectors), only
:func:`is_known` changes.
"""

from __future__ import annotations

from jwae_ext.data import Vocabulary, tokenize


def is_known(vocab: Vocabulary, word: str) -> bool:
    """Whether the model reads ``word`` as itself rather than as ``<unk>``."""
    return word in vocab


def query_words(vocab: Vocabulary, query: str) -> tuple[list[str], list[str]]:
    """The known and the unknown words of ``query`` (tokens with a letter or digit; punctuation
    is neither), each in order of first appearance, without repeats."""
    known: dict[str, None] = {}
    unknown: dict[str, None] = {}
    for token in tokenize(query):
        if any(ch.isalnum() for ch in token):
            (known if is_known(vocab, token) else unknown)[token] = None
    return list(known), list(unknown)
