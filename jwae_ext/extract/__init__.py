"""Offline feature extraction: a folder of images and captions -> a precomp folder.

``python -m jwae_ext.features IMAGES --captions FILE --out FOLDER`` (:mod:`jwae_ext.features`)
or :func:`extract`. Modules, one job each: :mod:`~jwae_ext.extract.caption_files` (the caption
layouts), :mod:`~jwae_ext.extract.images` (finding and decoding images),
:mod:`~jwae_ext.extract.plan` (matching, captions per image, splits),
:mod:`~jwae_ext.extract.backbones` (pretrained networks with local weights),
:mod:`~jwae_ext.extract.partial` (the resumable work area), :mod:`~jwae_ext.extract.run`.

Named ``extract`` rather than ``features``: :mod:`jwae_ext.data.features` is the embedded
synthetic scenes' fixed feature extractor, a different thing.
"""

from jwae_ext.extract.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from jwae_ext.extract.caption_files import CaptionSource, read_caption_file
from jwae_ext.extract.images import UnreadableImage, find_images, load_rgb
from jwae_ext.extract.plan import Plan, make_plan
from jwae_ext.extract.run import MANIFEST, REGIONS, Summary, extract

__all__ = [
    "DEFAULT_BACKBONE",
    "MANIFEST",
    "REGIONS",
    "Backbone",
    "CaptionSource",
    "Plan",
    "Summary",
    "UnreadableImage",
    "extract",
    "find_images",
    "load_backbone",
    "load_rgb",
    "make_plan",
    "read_caption_file",
]
