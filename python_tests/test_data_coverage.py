"""``unknown_words``: the share of another dataset's caption words a vocabulary lacks."""

import pytest

from jwae_ext.data import Vocabulary
from jwae_ext.data.coverage import is_word, unknown_words


def test_counts_word_tokens_and_distinct_words_without_punctuation():
    vocab = Vocabulary.build(["a red cube.", "a red ball"], threshold=1)
    share = unknown_words(vocab, ["A teal cube, a teal five-pointed star!", "a ball"])
    # words: a teal cube a teal five-pointed star a ball -> 9 tokens, 6 distinct
    assert (share["tokens"], share["words"]) == (9, 6)
    # unknown: teal (2), five-pointed, star -> 4 tokens, 3 distinct
    assert (share["unknown_tokens"], share["unknown_words"]) == (4, 3)
    assert share["unknown_token_pct"] == pytest.approx(400 / 9)
    assert share["unknown_word_pct"] == pytest.approx(50.0)


def test_any_container_of_words_is_a_vocabulary():
    assert unknown_words({"a": 0}, ["a b"])["unknown_words"] == 1


TOKENS = [(".", False), ("!", False), ("x", True), ("7", True), ("_", True), ("don't", True)]


@pytest.mark.parametrize(("token", "word"), [*TOKENS, ("é", True)])
def test_punctuation_is_not_a_word(token, word):
    assert is_word(token) is word


def test_captions_without_words_are_refused():
    with pytest.raises(ValueError, match="at least one word"):
        unknown_words({"a"}, ["...", ""])
