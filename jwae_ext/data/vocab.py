"""Caption tokenizer and word vocabulary (the VSE++/SCAN JSON format; never pickle).

The tokenizer needs no downloads: captions are lowercased and split by one regular expression into
words (runs of letters, digits, underscores and combining accents, keeping inner hyphens and
apostrophes: ``five-pointed``, ``don't``) and single other non-space characters (punctuation).
It is a pure function of the string, so the same captions give the same ids on every machine.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = (PAD, START, END, UNK)

# Word characters include combining accents, which lowercasing can produce ("İ" -> "i̇").
_WORD = r"[\w\u0300-\u036f]+"
_TOKEN = re.compile(rf"{_WORD}(?:[-']{_WORD})*|[^\w\s\u0300-\u036f]")


def tokenize(caption: str) -> list[str]:
    """Lowercase ``caption`` and split it into words and punctuation marks."""
    if not isinstance(caption, str):
        raise TypeError(f"jwae_ext: caption must be a str, got {type(caption).__name__}")
    return _TOKEN.findall(caption.lower())


class Vocabulary:
    """Word <-> id maps with the fixed special ids ``<pad>``=0, ``<start>``=1, ``<end>``=2,
    ``<unk>``=3; words follow in order of decreasing training count (ties alphabetical).

    With pretrained word vectors (:meth:`with_vectors`) the *input* vocabulary is extended: after
    the ``len(self)`` ids of the training vocabulary come one id per row of the vectors, in their
    row order (id ``len(self) + row``), so a word the vectors know is never ``<unk>`` even when
    the training captions lack it. A word in both keeps its training id. The training vocabulary
    alone is what ``len``, ``idx2word``, ``word2idx`` and the JSON file hold (the caption
    decoder's output vocabulary); the extension is rebuilt from the vectors when a run is loaded.
    """

    def __init__(self, words: Sequence[str], vector_words: Sequence[str] = ()):
        """``words``: the ordinary words, in id order (ids start at 4); ``vector_words``: the
        words of the pretrained vectors, row by row (the extension)."""
        idx2word = [*SPECIAL_TOKENS, *words]
        word2idx = {w: i for i, w in enumerate(idx2word)}
        if len(word2idx) != len(idx2word):
            dup = sorted(w for w, c in Counter(idx2word).items() if c > 1)
            raise ValueError(f"jwae_ext: vocabulary words must be unique, repeated: {dup[:10]}")
        self.idx2word: list[str] = idx2word
        self.word2idx: dict[str, int] = word2idx
        self.vector_words: tuple[str, ...] = tuple(vector_words)
        self._vector_ids = {w: len(idx2word) + row for row, w in enumerate(self.vector_words)}

    def with_vectors(self, vector_words: Sequence[str]) -> Vocabulary:
        """This training vocabulary extended by the words of pretrained vectors (row order)."""
        return Vocabulary(self.idx2word[len(SPECIAL_TOKENS) :], vector_words)

    @property
    def input_size(self) -> int:
        """The number of input ids: the training vocabulary's, then one per vector row."""
        return len(self.idx2word) + len(self.vector_words)

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> Vocabulary:
        """Words occurring at least ``threshold`` times in ``captions`` (the training captions)."""
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"jwae_ext: threshold must be an integer >= 1, got {threshold!r}")
        # Tokens never contain "<" next to letters, so the special tokens cannot be counted.
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        kept = [w for w, c in counts.items() if c >= threshold]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        """Whether the model reads ``word`` as itself, not as ``<unk>``: a word of the training
        vocabulary or, when extended, of the word vectors. The one definition of a known word
        (captions without one, a search query's unknown words)."""
        return word in self.word2idx or word in self._vector_ids

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.idx2word == other.idx2word
            and self.vector_words == other.vector_words
        )

    def __repr__(self) -> str:
        extended = f" + {len(self.vector_words)} vector words" if self.vector_words else ""
        return f"Vocabulary({len(self)} ids{extended})"

    def token_id(self, token: str) -> int:
        """The input id of one token: its training id, else its vector-row id, else ``<unk>``."""
        found = self.word2idx.get(token)
        return found if found is not None else self._vector_ids.get(token, UNK_ID)

    def encode(self, caption: str) -> list[int]:
        """Ids of ``caption``'s tokens between ``<start>`` and ``<end>``; unknown: ``<unk>``."""
        return [START_ID, *(self.token_id(tok) for tok in tokenize(caption)), END_ID]

    def known_tokens(self, caption: str) -> list[str]:
        """The tokens of ``caption`` this vocabulary knows (training words and, when extended,
        the vectors' words): all that does not become ``<unk>``."""
        return [tok for tok in tokenize(caption) if tok in self]

    def captions_without_known_word(self, captions: Iterable[str]) -> int:
        """How many of ``captions`` have no known word: every token unknown (or none at all), so
        the model sees ``<unk>`` only and cannot tell them apart (their codes tie)."""
        return sum(not self.known_tokens(c) for c in captions)

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> str:
        """The words of ``ids`` joined by spaces; stops at ``<end>`` and drops ``<start>`` and
        ``<pad>`` unless ``strip_special`` is False. Raises ``ValueError`` on an id out of range."""
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.input_size:
                raise ValueError(f"jwae_ext: token id {i} out of range [0, {self.input_size})")
            if strip_special:
                if i == END_ID:
                    break
                if i in (PAD_ID, START_ID):
                    continue
            n = len(self.idx2word)
            words.append(self.idx2word[i] if i < n else self.vector_words[i - n])
        return " ".join(words)

    def to_json(self) -> dict:
        """The SCAN-style dict: ``word2idx``, ``idx2word`` (string keys, as in JSON), ``idx``."""
        return {
            "word2idx": dict(self.word2idx),
            "idx2word": {str(i): w for i, w in enumerate(self.idx2word)},
            "idx": len(self.idx2word),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, ensure_ascii=False, indent=0)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary JSON file (``word2idx`` and ``idx2word``, as written by :meth:`save`
        or by SCAN). Raises ``ValueError`` naming the file when it is malformed or its maps
        disagree."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            # RecursionError: nesting deeper than the parser's stack.
            raise ValueError(f"jwae_ext: vocabulary file {path} is not valid JSON: {e}") from None
        try:
            return cls._from_json(data)
        except ValueError as e:
            raise ValueError(f"jwae_ext: vocabulary file {path}: {e}") from None

    @classmethod
    def _from_json(cls, data: object) -> Vocabulary:
        if not isinstance(data, dict) or "word2idx" not in data or "idx2word" not in data:
            raise ValueError("expected a JSON object with keys 'word2idx' and 'idx2word'")
        word2idx, raw = data["word2idx"], data["idx2word"]
        if isinstance(raw, list):
            raw = dict(enumerate(raw))
        if not isinstance(word2idx, dict) or not isinstance(raw, dict):
            raise ValueError("'word2idx' must be an object and 'idx2word' an object or a list")
        idx2word: dict[int, object] = {}
        for key, word in raw.items():
            try:
                idx2word[int(key)] = word
            except ValueError:
                raise ValueError(f"'idx2word' key {key!r} is not an integer") from None
        n = len(idx2word)
        if sorted(idx2word) != list(range(n)):
            raise ValueError(f"'idx2word' ids must be 0..{n - 1} without gaps")
        words = [idx2word[i] for i in range(n)]
        if not all(isinstance(w, str) and w for w in words):
            raise ValueError("'idx2word' values must be non-empty strings")
        if tuple(words[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"ids 0..3 must be {list(SPECIAL_TOKENS)}, got {words[:4]}")
        if word2idx != {w: i for i, w in enumerate(words)} or len(word2idx) != n:
            raise ValueError("'word2idx' and 'idx2word' are not inverse maps of each other")
        return cls(words[4:])


def unknown_captions_line(name: str, count: int, total: int) -> str:
    """What training and evaluation report of a split ``name`` whose ``count`` of ``total``
    captions have no known word (:meth:`Vocabulary.captions_without_known_word`)."""
    return f"{name}: {count} of {total} captions have no known word"
