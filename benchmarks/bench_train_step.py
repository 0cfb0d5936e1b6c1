"""One full ``jwae-mh`` training step — encoders, decoders, the encoder/decoder update and the
discriminator step — with our operators ("ours") against the same model whose losses run through
the pure-PyTorch references ("reference"), side by side. The summary's ``/ref`` column is the time
ratio; samples per second are in each benchmark's ``extra_info``.

Two shapes: the embedded default run (d = 256, vocabulary ~120) and a COCO-sized model
(d = 1024, 2048-d image features, 10k-word vocabulary), where the fused vocabulary
cross-entropy and the tiled hinge loss matter most.

    python -m pytest benchmarks/bench_train_step.py
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import losses, models, reference
from jwae_ext.losses import LossConfig
from jwae_ext.models import END, JWAE, START, UNK, ModelConfig

SHAPES = sizes(
    {
        "embedded": dict(img_dim=1024, vocab_size=122, embed_size=256, img_hidden=512),
        "coco": dict(img_dim=2048, vocab_size=10_000, embed_size=1024, img_hidden=1024),
    },
    {"tiny": dict(img_dim=32, vocab_size=40, embed_size=16, img_hidden=16, word_dim=8)},
)
BATCH = sizes(128, 8)
MAX_LEN = 16
REFERENCE_OPS = types.SimpleNamespace(
    mh_loss=reference.mh_loss,
    wae_loss=reference.wae_loss,
    discriminator_loss=reference.discriminator_loss,
    mmd_imq=reference.mmd_imq,
)


def _batch(cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, cfg.img_dim, generator=g)
    lengths = torch.randint(6, MAX_LEN + 1, (BATCH,), generator=g)
    tokens = torch.zeros(BATCH, MAX_LEN, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, n - 1] = START, END
        tokens[i, 1 : n - 1] = torch.randint(UNK + 1, cfg.vocab_size, (n - 2,), generator=g)
    ids = torch.arange(BATCH) // 2  # two captions per image, as in a COCO batch
    return tuple(t.to(DEVICE) for t in (images, tokens, lengths, ids))


def _train_step(model: JWAE, batch: tuple[torch.Tensor, ...]):
    loss_cfg = LossConfig()
    opt = torch.optim.Adam(model.autoencoder_parameters(), lr=2e-4)
    d_opt = torch.optim.Adam(model.disc.parameters(), lr=5e-5, betas=(0.5, 0.999))

    def step():
        total, _, (z_img, z_txt) = model.autoencoder_loss(*batch, loss_cfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.autoencoder_parameters(), 2.0)
        opt.step()
        d_loss = model.discriminator_loss(z_img, z_txt)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        return total.detach()

    return step


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step(measure, benchmark, monkeypatch, shape, impl):
    if impl == "reference":
        # The model and the losses look the operators up at call time through these modules.
        monkeypatch.setattr(models.parts, "ops", REFERENCE_OPS)
        monkeypatch.setattr(losses, "ops", REFERENCE_OPS)
    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPES[shape])
    model = JWAE(cfg).to(DEVICE)
    batch = _batch(cfg)
    measure(f"train step {shape} B={BATCH}", impl, _train_step(model, batch), rounds=5)
    if benchmark.stats is not None:
        benchmark.extra_info["samples_per_s"] = round(BATCH / benchmark.stats.stats.median, 1)
