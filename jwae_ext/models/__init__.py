"""The networks of every variant (docs/design.md, "Layers"): pooled jWAE models
(:class:`JWAE`: ``jwae-mh``, ``jwae-mse``, ``vse++``, ``vse0``) and cross-attention models
(:class:`SCAN`: ``scan``, ``scan-jwae-mh``), both :class:`JointModel` s sharing the decoders,
the discriminator and the jWAE terms. Plain ``nn.Module`` s; the objectives they use live in
:mod:`jwae_ext.losses`.
"""

from __future__ import annotations

from jwae_ext.losses import SCAN_VARIANTS
from jwae_ext.models.jwae import JWAE, ImageEncoder, TextEncoder
from jwae_ext.models.parts import (
    Discriminator,
    ImageDecoder,
    JointModel,
    ModelConfig,
    TextDecoder,
)
from jwae_ext.models.scan import SCAN, XattnConfig, masked_words
from jwae_ext.models.words import (
    END,
    PAD,
    START,
    TEXT_ENCODERS,
    UNK,
    PretrainedVectors,
    WordEmbedding,
)

__all__ = [
    "END",
    "JWAE",
    "PAD",
    "SCAN",
    "START",
    "TEXT_ENCODERS",
    "UNK",
    "Discriminator",
    "ImageDecoder",
    "ImageEncoder",
    "JointModel",
    "ModelConfig",
    "PretrainedVectors",
    "TextDecoder",
    "TextEncoder",
    "WordEmbedding",
    "XattnConfig",
    "build_model",
    "masked_words",
]


def build_model(
    variant: str,
    cfg: ModelConfig,
    xattn: XattnConfig | None = None,
    vectors: PretrainedVectors | None = None,
) -> JointModel:
    """The model of ``variant``: :class:`SCAN` with ``xattn`` (default SCAN's options) for the
    SCAN variants, :class:`JWAE` otherwise; ``vectors``: the pretrained word vectors (exactly
    when ``cfg`` has them), shared by every word embedding of the model."""
    if variant in SCAN_VARIANTS:
        return SCAN(cfg, xattn or XattnConfig(), vectors)
    return JWAE(cfg, vectors)
