"""Tokenizer and vocabulary: ids, encode/decode, JSON files (good and malformed), fuzzing."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.data import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    Vocabulary,
    tokenize,
    unknown_captions_line,
)
from jwae_ext.data.vocab import SPECIAL_TOKENS


def test_tokenize_splits_words_and_punctuation():
    assert tokenize("A Red-ish circle, isn't it?") == [
        "a", "red-ish", "circle", ",", "isn't", "it", "?",
    ]  # fmt: skip
    assert tokenize("  Two\tstars\n.") == ["two", "stars", "."]
    assert tokenize("İstanbul") == ["i̇stanbul"]  # lowercasing adds a combining dot: kept
    assert tokenize("") == []


def test_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="caption must be a str, got bytes"):
        tokenize(b"a circle")


def test_build_counts_threshold_and_orders_by_frequency():
    captions = ["a red circle", "a red square", "A red star .", "a blue circle"]
    vocab = Vocabulary.build(captions, threshold=2)
    assert vocab.idx2word == [*SPECIAL_TOKENS, "a", "red", "circle"]
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert len(Vocabulary.build(captions, threshold=1)) == 4 + 7
    assert len(Vocabulary.build(captions)) == 4 + 1  # default threshold 4: only "a"


@pytest.mark.parametrize("threshold", [0, -1, 1.5, True, "4"])
def test_build_rejects_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold must be an integer >= 1"):
        Vocabulary.build(["a"], threshold=threshold)


def test_encode_wraps_and_maps_unknown_words():
    vocab = Vocabulary(["a", "red", "circle"])
    assert vocab.encode("A red CIRCLE") == [START_ID, 4, 5, 6, END_ID]
    assert vocab.encode("a green circle") == [START_ID, 4, UNK_ID, 6, END_ID]
    assert vocab.encode("") == [START_ID, END_ID]


def test_decode_stops_at_end_and_checks_range():
    vocab = Vocabulary(["a", "red", "circle"])
    assert vocab.decode([START_ID, 4, 5, UNK_ID, 6, END_ID, 5, PAD_ID]) == "a red <unk> circle"
    assert vocab.decode([START_ID, 4, END_ID], strip_special=False) == "<start> a <end>"
    with pytest.raises(ValueError, match=r"token id 7 out of range \[0, 7\)"):
        vocab.decode([4, 7])


def test_duplicate_words_rejected():
    with pytest.raises(ValueError, match="must be unique"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match="must be unique"):
        Vocabulary(["<unk>"])


def test_save_load_round_trip_is_json(tmp_path):
    vocab = Vocabulary.build(["a red circle", "a red sqüare ,"] * 4)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["word2idx"]["<pad>"] == 0 and data["idx2word"]["3"] == "<unk>"
    assert Vocabulary.load(path) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary left behind


def test_load_accepts_scan_style_and_list_forms(tmp_path):
    words = [*SPECIAL_TOKENS, "a", "dog"]
    scan = {
        "word2idx": {w: i for i, w in enumerate(words)},
        "idx2word": {str(i): w for i, w in enumerate(words)},
        "idx": len(words),
    }
    (tmp_path / "scan.json").write_text(json.dumps(scan))
    listed = {"word2idx": scan["word2idx"], "idx2word": words}
    (tmp_path / "list.json").write_text(json.dumps(listed))
    assert Vocabulary.load(tmp_path / "scan.json").idx2word == words
    assert Vocabulary.load(tmp_path / "list.json").idx2word == words


def _vocab_json(**changes):
    words = [*SPECIAL_TOKENS, "a", "dog"]
    data = {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": dict(enumerate(words))}
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"word2idx": {}}', "expected a JSON object with keys"),
        (_vocab_json(idx2word={"0": "<pad>", "2": "<start>"}), "without gaps"),
        (_vocab_json(idx2word={"x": "<pad>"}), "is not an integer"),
        (_vocab_json(idx2word=["<start>", "<pad>", "<end>", "<unk>"]), "ids 0..3 must be"),
        (_vocab_json(idx2word=[*SPECIAL_TOKENS, ""]), "non-empty strings"),
        (_vocab_json(word2idx={"a": 4}), "not inverse maps"),
        (_vocab_json(word2idx=[]), "'word2idx' must be an object"),
    ],
)
def test_malformed_vocab_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad_vocab.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        Vocabulary.load(path)
    assert str(path) in str(err.value)


def test_non_utf8_vocab_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"word2idx": "\xff"}')
    with pytest.raises(ValueError, match="not valid JSON") as err:
        Vocabulary.load(path)
    assert str(path) in str(err.value)


@given(st.text())
def test_tokenize_fuzz(text):
    tokens = tokenize(text)
    assert all(tok and not any(ch.isspace() for ch in tok) for tok in tokens)
    assert tokenize(" ".join(tokens)) == tokens  # tokens are stable under re-tokenization
    assert tokenize(text) == tokens


@given(st.lists(st.text(max_size=30), max_size=20), st.integers(1, 3), st.text(max_size=30))
def test_vocabulary_fuzz(captions, threshold, query):
    vocab = Vocabulary.build(captions, threshold)
    ids = vocab.encode(query)
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert all(0 <= i < len(vocab) for i in ids)
    known = [t for t in tokenize(query) if t in vocab]
    if len(known) == len(tokenize(query)):
        assert vocab.decode(ids) == " ".join(known)
    assert Vocabulary._from_json(json.loads(json.dumps(vocab.to_json()))) == vocab


@given(st.binary(max_size=200))
def test_vocab_loader_fuzz_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("vocab") / "v.json"
    path.write_bytes(data)
    try:
        Vocabulary.load(path)
    except ValueError as e:
        assert str(path) in str(e)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(
    st.one_of(
        _json,
        st.fixed_dictionaries({"word2idx": _json, "idx2word": _json}),
        st.lists(st.text(max_size=6), max_size=6).map(
            lambda ws: {
                "word2idx": {w: i for i, w in enumerate([*SPECIAL_TOKENS, *ws])},
                "idx2word": [*SPECIAL_TOKENS, *ws],
            }
        ),
    )
)
def test_vocab_loader_fuzz_json_structures(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("vocab") / "v.json"
    path.write_text(json.dumps(data))
    try:
        vocab = Vocabulary.load(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert vocab.idx2word[:4] == list(SPECIAL_TOKENS)
        assert all(vocab.word2idx[w] == i for i, w in enumerate(vocab.idx2word))


def test_captions_without_known_word():
    vocab = Vocabulary(["a", "red", "cube", "."])
    captions = ["A red cube.", "a zebra", "zebra quagga", "Quagga!", "", "okapi ."]
    # "a zebra" and "okapi ." keep a known token; the others have none (or no token at all).
    assert vocab.captions_without_known_word(captions) == 3
    assert unknown_captions_line("x/dev", 3, len(captions)) == (
        "x/dev: 3 of 6 captions have no known word"
    )
