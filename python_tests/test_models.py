"""The jWAE networks and losses: shapes, masking, gradient routing, and that training lowers every
term of the objective."""

import dataclasses

import pytest
import torch

from jwae_ext.losses import LossConfig
from jwae_ext.models import END, JWAE, PAD, START, UNK, ModelConfig

CFG = ModelConfig(img_dim=24, vocab_size=30, embed_size=16, word_dim=8, img_hidden=20)


def _batch(b: int = 8, max_len: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, CFG.img_dim, generator=g)
    lengths = torch.randint(2, max_len + 1, (b,), generator=g)
    tokens = torch.zeros(b, max_len, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = START
        tokens[i, 1 : n - 1] = torch.randint(UNK + 1, CFG.vocab_size, (n - 2,), generator=g)
        tokens[i, n - 1] = END
    return images, tokens, lengths, torch.arange(b)


def _model(cfg: ModelConfig = CFG, seed: int = 0) -> JWAE:
    torch.manual_seed(seed)
    return JWAE(cfg)


def test_shapes_and_prior_scale():
    model = _model()
    images, tokens, lengths, _ = _batch()
    z_img = model.encode_images(images)
    z_txt = model.encode_captions(tokens, lengths)
    assert z_img.shape == z_txt.shape == (8, CFG.embed_size)
    assert model.img_dec(z_img).shape == images.shape
    states, targets = model.txt_dec(z_txt, tokens, lengths)
    assert states.shape == (8 * (tokens.shape[1] - 1), CFG.embed_size)
    assert torch.equal(targets, tokens[:, 1:].reshape(-1))  # shifted: predict the next token
    assert model.disc(z_img).shape == (8,)
    # The default prior has samples of norm ~= 1, the scale of the normalized codes.
    norms = model.sample_prior(4096, z_img).norm(dim=1)
    assert abs(norms.mean().item() - 1.0) < 0.05


def test_img_hidden_zero_makes_the_image_encoder_and_decoder_linear():
    model = _model(dataclasses.replace(CFG, img_hidden=0))
    linear = [type(m) for m in model.img_enc.net] + [type(m) for m in model.img_dec.net]
    assert linear == [torch.nn.Linear, torch.nn.Linear]
    assert model.img_enc.net[0].weight.shape == (CFG.embed_size, CFG.img_dim)
    images = _batch()[0]
    assert model.img_dec(model.encode_images(images)).shape == images.shape


def test_caption_code_ignores_padding_and_bidirectional_averages():
    for bidirectional in (False, True):
        model = _model(dataclasses.replace(CFG, bidirectional=bidirectional)).eval()
        _, tokens, lengths, _ = _batch()
        padded = torch.cat([tokens, torch.full((8, 5), PAD)], dim=1)
        torch.testing.assert_close(
            model.encode_captions(tokens, lengths), model.encode_captions(padded, lengths)
        )


def test_decoder_states_at_padding_are_zero_and_targets_ignored():
    model = _model().eval()
    _, tokens, lengths, _ = _batch()
    states, targets = model.txt_dec(torch.randn(8, CFG.embed_size), tokens, lengths)
    pad = targets == PAD
    assert pad.any()
    assert torch.all(states[pad] == 0)


def test_word_dropout_only_replaces_words_and_only_in_training():
    model = _model(dataclasses.replace(CFG, word_dropout=0.9))
    _, tokens, _, _ = _batch(b=64)
    dropped = model.txt_dec._drop_words(tokens)
    special = tokens <= END
    assert torch.equal(dropped[special], tokens[special])
    assert (dropped[~special] == UNK).float().mean() > 0.7
    model.eval()
    assert torch.equal(model.txt_dec._drop_words(tokens), tokens)


@pytest.mark.parametrize("variant", ["jwae-mh", "jwae-mse", "vse++", "vse0"])
@pytest.mark.parametrize("prior", ["gan", "mmd"])
def test_autoencoder_loss_reaches_every_autoencoder_weight_and_no_discriminator_weight(
    variant, prior
):
    model = _model()
    loss_cfg = LossConfig(variant=variant, prior=prior)
    total, terms, _ = model.autoencoder_loss(*_batch(), loss_cfg)
    total.backward()
    assert all(p.grad is None for p in model.disc.parameters())
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("disc.")}
    if loss_cfg.uses_wae:
        missing = [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
        assert missing == []
        expected = {"match", "recon", "nll"} | (
            {"adv_img", "adv_txt"} if prior == "gan" else {"mmd_img", "mmd_txt"}
        )
        assert expected <= set(terms)
    else:
        assert set(terms) == {"match"}
        assert all(grads[n] is None for n in grads if n.startswith(("img_dec", "txt_dec")))


def test_discriminator_step_leaves_autoencoder_untouched_and_vice_versa():
    model = _model()
    loss_cfg = LossConfig()
    ae_opt = torch.optim.Adam(model.autoencoder_parameters(), lr=1e-2)
    d_opt = torch.optim.Adam(model.disc.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    total, _, (z_img, z_txt) = model.autoencoder_loss(*_batch(), loss_cfg)
    ae_opt.zero_grad()
    total.backward()
    ae_opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(n.startswith("disc.") for n in changed)

    after_ae = {n: p.detach().clone() for n, p in model.named_parameters()}
    d_opt.zero_grad()
    model.discriminator_loss(z_img, z_txt).backward()
    d_opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, after_ae[n])}
    assert changed and all(n.startswith("disc.") for n in changed)


def test_training_on_one_batch_lowers_every_term():
    """The discriminator alone against fixed codes: its loss falls. Then encoders/decoders against
    that (now informed, fixed) discriminator: matching, reconstruction, caption NLL and both
    adversarial terms fall."""
    model = _model()
    model.txt_dec.word_dropout = 0.0
    batch = _batch(b=12)
    loss_cfg = LossConfig(weights=(1.0, 1.0, 1.0, 1.0))
    _, _, (z_img, z_txt) = model.autoencoder_loss(*batch, loss_cfg)

    d_opt = torch.optim.Adam(model.disc.parameters(), lr=3e-3)
    d_losses = []
    for _ in range(60):
        d_loss = model.discriminator_loss(z_img, z_txt)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        d_losses.append(float(d_loss.detach()))
    assert d_losses[-1] < 0.5 * d_losses[0]

    opt = torch.optim.Adam(model.autoencoder_parameters(), lr=3e-3)
    first = last = None
    for _ in range(120):
        total, terms, _ = model.autoencoder_loss(*batch, loss_cfg)
        last = {k: float(v) for k, v in terms.items()}
        first = first or last
        opt.zero_grad()
        total.backward()
        opt.step()
    for name in ("match", "recon", "nll", "adv_img", "adv_txt"):
        assert last[name] < 0.7 * first[name], (name, first[name], last[name])


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="embed_size"):
        ModelConfig(img_dim=4, vocab_size=10, embed_size=0)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(img_dim=4, vocab_size=3)
    with pytest.raises(ValueError, match="img_hidden must be an integer >= 0, got -1"):
        ModelConfig(img_dim=4, vocab_size=10, img_hidden=-1)
    with pytest.raises(ValueError, match="word_dropout"):
        ModelConfig(img_dim=4, vocab_size=10, word_dropout=1.0)
    with pytest.raises(ValueError, match="variant"):
        LossConfig(variant="clip")
