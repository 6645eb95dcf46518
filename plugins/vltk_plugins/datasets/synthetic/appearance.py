"""A continuous appearance space over the shared layouts: what vision-language pretraining samples from.

Why: a foundation pretrained only on the six named domains would learn six looks, not the factors behind them.
:class:`Appearance` spans them with independent continuous knobs — palette (flat game colours to greyer "real"
ones), surface texture, sun, time of day, fog density, rain, snow, white balance, sensor noise — and
:func:`paint_appearance` paints any point of it with the same primitives the domain painters use
(:mod:`.painting`, :mod:`.domains`). Camera height and clutter vary with the layout (``scene_layout`` draws the
camera height and the objects per scene), so every ``(seed, index)`` already moves along those axes.

The six named domains stay as they were: they are rendered by their own painters (bit-identical, the dataset
tests check it); :data:`NAMED_APPEARANCES` places each at its coordinates in this space, which is what the
captions of a named-domain scene describe. :func:`sample_appearance` draws a free point (seeded per scene).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vltk_plugins.datasets.synthetic.codes import N_DETAILS, ROAD, VEGETATION
from vltk_plugins.datasets.synthetic.domains import (
    _EMISSION,
    _EMITS,
    _FLAT_COLOURS,
    _GLOW,
    _REAL_COLOURS,
    _streaks,
    _wet_reflections,
)
from vltk_plugins.datasets.synthetic.layout import Layout
from vltk_plugins.datasets.synthetic.painting import (
    finish_image,
    glow,
    ground_mask,
    instance_albedo,
    paint_sky,
    rgb,
    sample_noise_smooth,
    sun_factor,
    texture_factor,
    vignette,
)


@dataclass(frozen=True)
class Appearance:
    """One point of the appearance space; every knob is in ``[0, 1]`` except ``tint`` (a white-balance shift).

    ``realism`` 0 = flat saturated game palette, 1 = greyer "real" palette with clouds; ``texture`` surface
    texture gain; ``sun`` shading strength; ``daylight`` 1 = day, 0 = night (lamps and lit windows take over);
    ``fog`` density (0 none, 1 about 20 m visibility); ``rain`` and ``snow`` intensities; ``noise`` sensor noise.
    """

    realism: float = 0.0
    texture: float = 0.0
    sun: float = 1.0
    daylight: float = 1.0
    fog: float = 0.0
    rain: float = 0.0
    snow: float = 0.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


#: Where the six named domains sit in the space (what their captions say); they are painted by their own painters.
NAMED_APPEARANCES: dict[str, Appearance] = {
    "synthetic": Appearance(),
    "textured": Appearance(realism=1.0, texture=1.0, sun=0.8, noise=0.3),
    "fog": Appearance(realism=1.0, texture=1.0, sun=0.2, fog=0.7, noise=0.25),
    "night": Appearance(realism=1.0, texture=1.0, sun=0.0, daylight=0.0, noise=0.7),
    "rain": Appearance(realism=1.0, texture=1.0, sun=0.15, rain=0.8, fog=0.2, noise=0.4),
    "snow": Appearance(realism=1.0, texture=1.0, sun=0.3, snow=0.8, fog=0.25, noise=0.3),
}


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A free point of the space: each weather/light factor is absent about half the time, else of any strength.

    Factors are drawn independently (fog with snow at night is allowed), so pretraining sees combinations no
    named domain shows; the named domains lie inside the sampled ranges.
    """

    def maybe(p: float) -> float:
        return float(rng.uniform(0.2, 1.0)) if rng.random() < p else 0.0

    return Appearance(
        realism=float(rng.random()),
        texture=float(rng.random()),
        sun=float(rng.random()),
        daylight=1.0 - maybe(0.3),
        fog=maybe(0.3),
        rain=maybe(0.25),
        snow=maybe(0.25),
        tint=tuple(float(v) for v in rng.normal(0.0, 0.04, 3)),  # type: ignore[arg-type]
        noise=float(rng.random()),
    )


def _night(lay: Layout, img: np.ndarray, darkness: float, rng: np.random.Generator) -> np.ndarray:
    """Darken towards moonlight and let lamps, lit windows, head- and tail-lights shine in proportion."""
    if darkness <= 0:
        return img
    tint = np.array([0.13, 0.15, 0.25], np.float32) * rng.uniform(0.8, 1.2)
    dark = img * tint[:, None, None] * 1.3
    out = img * (1 - darkness) + dark * darkness
    detail = (lay.code >> 3) & (N_DETAILS - 1)
    emissive = _EMITS.take(detail)
    if emissive.any():
        emission = np.take(np.ascontiguousarray(_EMISSION.T), detail, axis=1)
        lit = out * (1 - darkness) + emission * darkness
        np.copyto(out, lit, where=emissive)
        out += glow(np.take(np.ascontiguousarray(_GLOW.T), detail, axis=1)) * darkness
    return out


def _snow(lay: Layout, img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Snow cover on the ground (less on the road) and vegetation, plus flakes; ``amount`` scales both."""
    if amount <= 0:
        return img
    H, W = lay.label.shape
    lumps = sample_noise_smooth(lay.tu, lay.tv, 1.2, rng.uniform(0, 256), rng.uniform(0, 256))
    bias = np.where(lay.label == ROAD, 0.35, 0.85).astype(np.float32) - (1 - amount) * 0.8
    cover = np.clip((lumps + bias) * 2.0, 0.0, 1.0) * ground_mask(lay)
    cover = np.maximum(cover, (lay.label == VEGETATION) * np.clip(lumps * 1.5 + 0.4, 0.0, 0.8) * amount)
    snow = np.array([0.9, 0.92, 0.96], np.float32)[:, None, None] - 0.06 * np.abs(lumps)
    img = img * (1 - cover) + snow * cover
    flakes = np.zeros((H, W), np.float32)
    n = int(H * W * 0.006 * amount)
    flakes[rng.integers(0, H, n), rng.integers(0, W, n)] = 0.8
    return img * (1 - flakes) + flakes * np.float32(0.97)


def paint_appearance(lay: Layout, rng: np.random.Generator, look: Appearance) -> np.ndarray:
    """Paint ``lay`` at point ``look`` of the space: ``image uint8 [H, W, 3]`` (labels are the layout's)."""
    H, W = lay.label.shape
    flat = instance_albedo(lay, _FLAT_COLOURS, 0.08)
    real = instance_albedo(lay, _REAL_COLOURS, 0.2)
    img = flat * (1 - look.realism) + real * look.realism
    img *= sun_factor(lay, rng, look.sun)
    if look.texture > 0:
        img *= texture_factor(lay, rng, look.texture)
    top = rgb((70, 130, 230))[0] * (1 - look.realism) + rgb((120, 152, 192))[0] * look.realism
    horizon = rgb((170, 205, 245))[0] * (1 - look.realism) + rgb((200, 208, 216))[0] * look.realism
    grey_sky = max(look.rain, look.snow, look.fog)
    top = top * (1 - grey_sky) + rgb((150, 154, 160))[0] * grey_sky
    horizon = horizon * (1 - grey_sky) + rgb((200, 202, 206))[0] * grey_sky
    paint_sky(lay, img, top, horizon, clouds=0.8 * look.realism, rng=rng)
    if look.rain > 0:
        grey = img.mean(axis=0)
        img = img * (1 - 0.5 * look.rain) + grey * (0.3 * look.rain)
        img = _wet_reflections(lay, img, rng, 0.55 * look.rain)
    img = _snow(lay, img, look.snow, rng)
    img = _night(lay, img, 1.0 - look.daylight, rng)
    if look.fog > 0:
        visibility = 20.0 + (1.0 - look.fog) * 400.0
        t = np.exp(lay.depth * np.float32(-1.0 / visibility))
        haze = np.array([0.78, 0.8, 0.82], np.float32) * (0.25 + 0.75 * look.daylight)
        img = img * t + haze[:, None, None] * (1 - t)
    if look.rain > 0:
        count = int(H * W * 0.0035 * look.rain)
        img = img + _streaks((H, W), rng, count, max(H // 14, 3), rng.uniform(-0.35, 0.35)) * 0.2
    img = img * (1.0 + np.asarray(look.tint, np.float32))[:, None, None]
    img *= 1 - look.realism * (1 - vignette(H, W))
    return finish_image(img, rng, 0.035 * look.noise)


__all__ = ["NAMED_APPEARANCES", "Appearance", "paint_appearance", "sample_appearance"]
