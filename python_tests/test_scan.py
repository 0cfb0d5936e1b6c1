"""SCAN and SCAN+jWAE-MH: the networks, their loss against the reference formulation, training,
resuming and evaluating them end to end."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_train import train as _train  # the trainer's command line on a tiny embedded slice

from jwae_ext import ops, reference
from jwae_ext.config import TrainConfig, resolve
from jwae_ext.data import PairDataset, Vocabulary, collate, synthetic_split
from jwae_ext.encoding import encode_split_xattn
from jwae_ext.evaluation import evaluate_split
from jwae_ext.losses import LossConfig
from jwae_ext.models import SCAN, ModelConfig, XattnConfig, build_model, masked_words
from jwae_ext.retrieval import evaluate


@pytest.fixture(scope="module")
def tiny():
    split = synthetic_split("a", "dev", num_images=12)
    vocab = Vocabulary.build(split.captions, threshold=1)
    cfg = ModelConfig(img_dim=256, vocab_size=len(vocab), embed_size=16, word_dim=8, img_hidden=16)
    return split, vocab, cfg


def _batch(split, vocab, rows):
    return collate([PairDataset(split, vocab, regions=True)[j] for j in rows])


def test_build_model_picks_scan_for_the_scan_variants(tiny):
    _, _, cfg = tiny
    assert isinstance(build_model("scan", cfg), SCAN)
    assert isinstance(build_model("scan-jwae-mh", cfg, XattnConfig(direction="i2t")), SCAN)
    assert not isinstance(build_model("jwae-mh", cfg), SCAN)


def test_codes_are_normalized_and_padding_is_zero(tiny):
    split, vocab, cfg = tiny
    torch.manual_seed(0)
    model = SCAN(cfg, XattnConfig())
    batch = _batch(split, vocab, range(0, 20, 3))
    v = model.encode_images(batch.images)
    e = model.encode_captions(batch.captions, batch.lengths)
    assert v.shape == (7, 9, 16) and e.shape == (7, batch.captions.shape[1], 16)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(7, 9))
    real = masked_words(e, batch.lengths)
    assert real.shape == (int(batch.lengths.sum()), 16)
    torch.testing.assert_close(real.norm(dim=-1), torch.ones(real.shape[0]))
    steps = torch.arange(e.shape[1])
    assert (e[steps >= batch.lengths.unsqueeze(1)] == 0).all()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_scan_loss_is_the_mh_loss_of_the_reference_scores(tiny, direction):
    split, vocab, cfg = tiny
    torch.manual_seed(1)
    xattn = XattnConfig(direction=direction, lambda_softmax=4.0, agg="mean")
    model = SCAN(cfg, xattn).double()
    batch = _batch(split, vocab, [0, 5, 6, 11, 17, 30, 41, 59])
    loss, terms, (z_img, z_txt) = model.autoencoder_loss(
        batch.images.double(),
        batch.captions,
        batch.lengths,
        batch.image_ids,
        LossConfig(variant="scan"),
    )
    v = model.encode_images(batch.images.double())
    e = model.encode_captions(batch.captions, batch.lengths)
    scores = reference.xattn_scores(v, e, batch.lengths, **xattn.options())
    expected = reference.mh_loss_from_scores(
        scores, margin=0.2, max_violation=True, img_ids=batch.image_ids, txt_ids=batch.image_ids
    )
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"match"}
    assert z_img.shape == (8 * 9, 16) and z_txt.shape == (int(batch.lengths.sum()), 16)


def test_scan_jwae_terms_use_every_region_and_word(tiny):
    split, vocab, cfg = tiny
    torch.manual_seed(2)
    model = SCAN(cfg, XattnConfig())
    batch = _batch(split, vocab, range(8))
    loss, terms, _ = model.autoencoder_loss(
        batch.images, batch.captions, batch.lengths, batch.image_ids, LossConfig("scan-jwae-mh")
    )
    assert {"match", "recon", "nll", "adv_img", "adv_txt"} <= set(terms)
    # The reconstruction is over every region feature of the batch, per image.
    v = model.encode_images(batch.images)
    rec = model.img_dec(v.reshape(-1, 16))
    expected = (rec - batch.images.reshape(-1, 256)).abs().sum() / 8
    torch.testing.assert_close(terms["recon"], expected.detach())
    loss.backward()
    assert model.img_dec.net[0].weight.grad is not None
    assert all(p.grad is None for p in model.disc.parameters())


def test_scan_overfits_a_tiny_set(tiny):
    split, vocab, cfg = tiny
    torch.manual_seed(3)
    model = SCAN(cfg, XattnConfig())
    batch = _batch(split, vocab, range(0, 60, 5))  # one caption of each of the 12 images
    opt = torch.optim.Adam(model.autoencoder_parameters(), lr=5e-3)
    for step in range(150):
        # The sum of hinges first, as the trainer's warm-up: from random initialisation the
        # hardest negative alone collapses every code to one point (loss 2 x margin x B).
        cfg = LossConfig("scan", warmup=step < 50)
        loss, _, _ = model.autoencoder_loss(
            batch.images, batch.captions, batch.lengths, batch.image_ids, cfg
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    with torch.no_grad():
        v = model.encode_images(batch.images)
        e = model.encode_captions(batch.captions, batch.lengths)
        scores = ops.xattn_scores(v, e, batch.lengths)
    assert (scores.argmax(dim=1) == torch.arange(12)).float().mean() >= 0.9


def test_scan_evaluation_equals_ranking_the_full_score_matrix(tiny):
    split, vocab, cfg = tiny
    torch.manual_seed(4)
    model = SCAN(cfg, XattnConfig(agg="max"))
    table = evaluate_split(model, split, vocab, batch_size=7)
    codes = encode_split_xattn(model, split, vocab, batch_size=7)
    scores = reference.xattn_scores(codes.regions, codes.words, codes.lengths, agg="max")
    # Cosine ranking of identity "codes" reproduces ranking by a given score matrix: image i's
    # code is e_i, caption j's code is the column of scores (so e_i . c_j = scores[i, j]).
    n = scores.shape[0]
    expected = evaluate(
        torch.eye(n, dtype=scores.dtype), scores.t().contiguous(), torch.as_tensor(split.cap_to_img)
    )
    for direction in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            assert table[direction][key] == pytest.approx(expected[direction][key])


def test_pooled_codes_of_a_scan_model(tiny):
    split, vocab, cfg = tiny
    model = SCAN(cfg, XattnConfig())
    codes = encode_split_xattn(model, split, vocab)
    img, cap = codes.pooled()
    assert img.shape == (12, 16) and cap.shape == (60, 16)
    torch.testing.assert_close(img, F.normalize(codes.regions.mean(1), dim=1))


@pytest.mark.parametrize("variant", ["scan", "scan-jwae-mh"])
def test_scan_variants_train_resume_and_evaluate(tmp_path, variant):
    _train(tmp_path, "--variant", variant, "--epochs", "2", "--name", "straight")
    _train(tmp_path, "--variant", variant, "--epochs", "1", "--name", "resumed")
    _train(tmp_path, "--resume", "--epochs", "2", "--name", "resumed")
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["variant"] == variant and config["bidirectional"] is True
    straight, resumed = (
        torch.load(tmp_path / n / "last.pt", weights_only=True)["model"]
        for n in ("straight", "resumed")
    )
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    record = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ("recon" in record["train"]) == (variant == "scan-jwae-mh")
    test = json.loads((tmp_path / "straight" / "test.json").read_text())
    out = tmp_path / "cross.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jwae_ext.evaluate", str(tmp_path / "straight"),
         "--split", "test", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = json.loads(out.read_text())
    assert again["rsum"] == pytest.approx(test["rsum"])
    cross = subprocess.run(
        [sys.executable, "-m", "jwae_ext.evaluate", str(tmp_path / "straight"),
         "--data", "synthetic-b", "--num-images", "20", "--out", str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cross.returncode == 0, cross.stderr
    assert "rsum" in cross.stdout


def test_scan_on_pooled_precomp_fails_with_a_message(tmp_path):
    from jwae_ext.data import export_precomp

    folder = export_precomp(tmp_path / "pooled", "a", sizes={"train": 20, "dev": 10})
    proc = _train(tmp_path, "--variant", "scan", "--data", str(folder), check=False)
    assert proc.returncode == 2
    assert "no region features" in proc.stderr and "Traceback" not in proc.stderr


def test_scan_trains_on_a_region_precomp_folder(tmp_path):
    from jwae_ext.data import export_precomp

    folder = export_precomp(
        tmp_path / "regions", "a", sizes={"train": 40, "dev": 12, "test": 12}, regions=True
    )
    _train(tmp_path, "--variant", "scan", "--data", str(folder), "--epochs", "1", "--name", "r")
    assert (tmp_path / "r" / "test.json").exists()
    # The pooled variants read the same folder's regions mean-pooled.
    _train(tmp_path, "--variant", "vse++", "--data", str(folder), "--epochs", "1", "--name", "p")


@pytest.mark.parametrize("variant", ["scan", "scan-jwae-mh"])
def test_cross_attention_preset_on_embedded_data(variant):
    cfg = resolve(TrainConfig(variant=variant))
    assert (cfg.epochs, cfg.lr_update, cfg.warmup_epochs) == (5, 3, 1)
    pooled = resolve(TrainConfig(variant="jwae-mh"))
    assert (pooled.epochs, pooled.lr_update, pooled.warmup_epochs) == (10, 7, 2)
    # Explicit values win; a precomp folder keeps SCAN's recipe.
    assert resolve(TrainConfig(variant=variant, epochs=8, warmup_epochs=0)).epochs == 8
    precomp = resolve(TrainConfig(variant=variant, data="/data/coco_precomp"))
    assert (precomp.epochs, precomp.lr_update, precomp.warmup_epochs) == (30, 15, 0)
