"""How far the embedded dataset's style "b" is from style "a": the shift strength.

Cross-dataset results mean little when the shift between the two datasets is trivial or
impossible. Style "b" at strength ``s`` renders and phrases each scene as style "a" moved ``s``
of the way towards today's style "b": ``s = 0`` draws and words its (own) scenes exactly like
style "a", ``s = 1`` is style "b" unchanged (the same objects are returned, so the data is
bit for bit today's), ``s > 1`` moves further in the same direction (clipped where a value
would leave its range). Rendering constants are interpolated; phrasings mix both styles' choices
with weights ``(1 - s) p_a + s p_b`` (each style's weights normalized, negative ones dropped)
and interpolate the probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jwae_ext.data.captions import PHRASINGS, Phrasing
from jwae_ext.data.render import STYLES, Style
from jwae_ext.data.scenes import Choices

__all__ = ["check_strength", "shifted_phrasing", "shifted_style"]


def check_strength(strength: object) -> float:
    """``strength`` as a float, or a ValueError for anything but a finite number >= 0."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"jwae_ext: shift strength must be a number >= 0, got {strength!r}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"jwae_ext: shift strength must be a finite number >= 0, got {strength}")
    return float(strength)


def _towards(a: float, b: float, s: float) -> float:
    return a + s * (b - a)


def _int_towards(a: int, b: int, s: float, low: int, high: int) -> int:
    return min(high, max(low, round(_towards(a, b, s))))


def _rgb(a: tuple[int, ...], b: tuple[int, ...], s: float) -> tuple[int, ...]:
    return tuple(_int_towards(x, y, s, 0, 255) for x, y in zip(a, b, strict=True))


def shifted_style(strength: float) -> Style:
    """Style "b"'s rendering at ``strength`` (see the module docstring)."""
    s = check_strength(strength)
    a, b = STYLES["a"], STYLES["b"]
    if s == 1.0:
        return b
    return Style(
        name="b",
        palette=tuple(_rgb(x, y, s) for x, y in zip(a.palette, b.palette, strict=True)),
        background_top=_rgb(a.background_top, b.background_top, s),
        background_bottom=_rgb(a.background_bottom, b.background_bottom, s),
        noise=_int_towards(a.noise, b.noise, s, 0, 127),
        stroke=max(0.0, _towards(a.stroke, b.stroke, s)),
        stroke_darkness=_int_towards(a.stroke_darkness, b.stroke_darkness, s, 0, 16),
    )


def _mixed(a: Choices, b: Choices, s: float) -> Choices:
    """Both styles' options, weighted ``(1 - s) p_a + s p_b``; options left without weight are
    dropped (at least the heaviest one stays)."""
    options = list(a.options) + [o for o in b.options if o not in a.options]

    def share(choices: Choices, option: object) -> float:
        if option not in choices.options:
            return 0.0
        return choices.weights[choices.options.index(option)] / sum(choices.weights)

    weights = [_towards(share(a, o), share(b, o), s) for o in options]
    kept = [(o, w) for o, w in zip(options, weights, strict=True) if w > 0] or [
        (max(zip(options, weights, strict=True), key=lambda pair: pair[1])[0], 1.0)
    ]
    return Choices([o for o, _ in kept], [w for _, w in kept])


def _mix(a: Any, b: Any, s: float) -> Any:
    """One field of :class:`Phrasing` mixed (choices, tables of choices, probabilities)."""
    if isinstance(a, Choices):
        return _mixed(a, b, s)
    if isinstance(a, dict):
        return {key: _mixed(a[key], b[key], s) for key in a}
    if isinstance(a, tuple):
        return tuple(_mixed(x, y, s) for x, y in zip(a, b, strict=True))
    return min(1.0, max(0.0, _towards(a, b, s)))


def shifted_phrasing(strength: float) -> Phrasing:
    """Style "b"'s phrasing at ``strength`` (see the module docstring)."""
    s = check_strength(strength)
    a, b = PHRASINGS["a"], PHRASINGS["b"]
    if s == 1.0:
        return b
    return Phrasing(
        **{f.name: _mix(getattr(a, f.name), getattr(b, f.name), s) for f in dataclasses.fields(a)}
    )
