"""Data: the embedded synthetic datasets, VSE++/SCAN precomp folders, vocabulary, torch dataset.

Typical use::

    train = load_split("synthetic-a", "train")          # or a precomp folder path
    vocab = Vocabulary.build(train.captions, threshold=4)
    loader = DataLoader(PairDataset(train, vocab), batch_size=128, shuffle=True,
                        collate_fn=collate)
"""

from jwae_ext.data.dataset import PairBatch, PairDataset, collate, pad_captions
from jwae_ext.data.precomp import (
    available_splits,
    load_precomp,
    write_precomp,
    write_precomp_splits,
)
from jwae_ext.data.scenes import SceneAttributes
from jwae_ext.data.sources import EMBEDDED, load_split
from jwae_ext.data.split import CaptionSplit, PooledRegions
from jwae_ext.data.synthetic import DEFAULT_SIZES, export_precomp, synthetic_split
from jwae_ext.data.vocab import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    Vocabulary,
    tokenize,
    unknown_captions_line,
)

__all__ = [
    "DEFAULT_SIZES",
    "EMBEDDED",
    "END_ID",
    "PAD_ID",
    "START_ID",
    "UNK_ID",
    "CaptionSplit",
    "PairBatch",
    "PairDataset",
    "PooledRegions",
    "SceneAttributes",
    "Vocabulary",
    "available_splits",
    "collate",
    "export_precomp",
    "load_precomp",
    "load_split",
    "pad_captions",
    "synthetic_split",
    "tokenize",
    "unknown_captions_line",
    "write_precomp",
    "write_precomp_splits",
]
