"""The six appearance domains: what each paints over the shared layout, and the registry that names them.

A painter takes a :class:`~.layout.Layout` and the domain's own random generator and returns the image; it may
not change the layout, which is how every domain of a scene keeps exactly the same labels. ``synthetic`` is the
flat, saturated, GTAV-like source; ``textured`` is the "real" look (greyer colours, surface textures, clouds,
vignette, sensor noise) and ``fog``, ``night``, ``rain`` and ``snow`` start from that look and add their
weather or light. :data:`DOMAIN_PAINTERS` maps each name of
:data:`~vltk_plugins.datasets.synthetic.options.SYNTHETIC_DOMAINS` (same order) to its painter;
:func:`paint_domain` is the public way to paint one (it seeds the generator as every caller must, so an image
is the same wherever it is rendered).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from vltk.api import UserError, did_you_mean
from vltk_plugins.datasets.synthetic.codes import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    D_GLASS_LIT,
    D_HEAD,
    D_LAMP,
    D_TAIL,
    D_TL_AMBER,
    D_TL_GREEN,
    D_TL_RED,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    N_DETAILS,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)
from vltk_plugins.datasets.synthetic.layout import Layout
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS
from vltk_plugins.datasets.synthetic.painting import (
    finish_image,
    glow,
    ground_mask,
    instance_albedo,
    paint_sky,
    rgb,
    sample_noise,
    sample_noise_smooth,
    sun_factor,
    texture_factor,
    vignette,
)

#: A domain painter: ``(layout, generator) -> image uint8 [H, W, 3]`` (a transposed view of a ``[3, H, W]`` buffer).
Painter = Callable[[Layout, np.random.Generator], np.ndarray]

# Per class: the colour options an instance picks from (by its layout key, so a red car stays red everywhere).
_FLAT_COLOURS: dict[int, np.ndarray] = {
    ROAD: rgb((78, 78, 84)),
    SIDEWALK: rgb((168, 160, 150)),
    BUILDING: rgb((196, 160, 122), (160, 112, 92), (214, 206, 188), (132, 138, 150), (206, 180, 130)),
    WALL: rgb((186, 172, 150), (150, 150, 146)),
    FENCE: rgb((130, 104, 80), (118, 124, 130)),
    POLE: rgb((112, 114, 120)),
    LIGHT: rgb((38, 40, 36)),
    SIGN: rgb((214, 40, 32), (30, 80, 190), (240, 200, 30)),
    VEGETATION: rgb((62, 128, 44), (78, 140, 50), (50, 110, 40)),
    TERRAIN: rgb((128, 142, 70), (140, 130, 80)),
    SKY: rgb((110, 170, 240)),
    PERSON: rgb((180, 50, 50), (50, 76, 150), (214, 214, 204), (70, 70, 74), (220, 164, 50)),
    RIDER: rgb((200, 60, 40), (40, 90, 170), (60, 60, 60)),
    CAR: rgb((190, 26, 26), (26, 52, 150), (200, 200, 206), (30, 30, 34), (140, 142, 148), (240, 240, 240)),
    TRUCK: rgb((216, 216, 204), (204, 128, 38)),
    BUS: rgb((216, 190, 38), (50, 114, 190)),
    TRAIN: rgb((150, 150, 150)),
    MOTORCYCLE: rgb((38, 38, 38), (160, 30, 30)),
    BICYCLE: rgb((50, 50, 56), (150, 26, 26)),
}

# The "real" domains: greyer, less saturated, a different white balance, more variety per class.
_REAL_COLOURS: dict[int, np.ndarray] = {
    ROAD: rgb((92, 90, 92), (70, 70, 74), (104, 100, 96)),
    SIDEWALK: rgb((140, 134, 128), (120, 118, 116), (150, 140, 126)),
    BUILDING: rgb((120, 112, 104), (150, 140, 124), (96, 92, 90), (170, 164, 152), (128, 100, 86), (110, 116, 122)),
    WALL: rgb((134, 128, 118), (110, 108, 100)),
    FENCE: rgb((104, 96, 86), (86, 90, 92)),
    POLE: rgb((100, 100, 96), (76, 80, 82)),
    LIGHT: rgb((30, 32, 30)),
    SIGN: rgb((176, 50, 46), (40, 76, 150), (200, 180, 60), (210, 210, 210)),
    VEGETATION: rgb((66, 84, 40), (54, 74, 36), (86, 98, 52)),
    TERRAIN: rgb((112, 114, 76), (124, 118, 88), (96, 104, 66)),
    SKY: rgb((176, 192, 206), (150, 178, 204)),
    PERSON: rgb((60, 60, 66), (110, 90, 80), (40, 44, 60), (150, 140, 130), (120, 40, 40)),
    RIDER: rgb((50, 50, 56), (130, 50, 40), (80, 90, 110)),
    CAR: rgb((40, 40, 44), (150, 152, 156), (200, 200, 200), (90, 30, 30), (50, 60, 90), (110, 112, 108)),
    TRUCK: rgb((180, 180, 176), (120, 100, 70)),
    BUS: rgb((190, 186, 170), (80, 110, 150)),
    TRAIN: rgb((120, 124, 128)),
    MOTORCYCLE: rgb((36, 36, 40)),
    BICYCLE: rgb((40, 40, 44), (90, 30, 30)),
}


# Emission at night (RGB; >1 is allowed: it saturates and glows).
_EMISSION = np.zeros((N_DETAILS, 3), np.float32)
_EMISSION[D_GLASS_LIT] = (1.0, 0.78, 0.42)
_EMISSION[D_LAMP] = (2.2, 1.9, 1.3)
_EMISSION[D_TAIL] = (1.6, 0.12, 0.08)
_EMISSION[D_HEAD] = (2.4, 2.3, 2.0)
_EMISSION[D_TL_RED] = (1.8, 0.2, 0.1)
_EMISSION[D_TL_AMBER] = (1.8, 1.1, 0.2)
_EMISSION[D_TL_GREEN] = (0.2, 1.7, 0.8)
_EMITS = _EMISSION.max(axis=1) > 0
# How much of each light source blooms into a halo (lit windows barely do, lamps and headlights a lot).
_GLOW = _EMISSION.copy()
_GLOW[D_GLASS_LIT] *= 0.06
_GLOW[D_TAIL] *= 0.7


def _real(lay: Layout, rng: np.random.Generator, sun: float = 0.8) -> np.ndarray:
    """The ``textured`` look every adverse domain starts from (realistic colours, textures, clouds)."""
    img = instance_albedo(lay, _REAL_COLOURS, 0.2)
    img *= sun_factor(lay, rng, sun) * texture_factor(lay, rng)
    paint_sky(lay, img, rgb((120, 152, 192))[0], rgb((200, 208, 216))[0], clouds=0.8, rng=rng)
    return img


def _render_synthetic(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    img = instance_albedo(lay, _FLAT_COLOURS, 0.08)
    img *= sun_factor(lay, rng, 1.0)
    paint_sky(lay, img, rgb((70, 130, 230))[0], rgb((170, 205, 245))[0])
    return finish_image(img, rng, 0.0)


def _render_textured(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng)
    img *= vignette(*lay.label.shape)
    return finish_image(img, rng, 0.015, gamma=1.1)


def _render_fog(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.2)
    t = np.exp(lay.depth * np.float32(-1.0 / rng.uniform(25.0, 60.0)))
    haze = np.array([0.78, 0.8, 0.82], np.float32) * rng.uniform(0.92, 1.05)
    img *= t * 0.85
    img += (haze[:, None, None] * (1 - t)) + 0.06 * t
    return finish_image(img, rng, 0.012)


def _render_night(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    albedo = _real(lay, rng, sun=0.0)
    H, W = lay.label.shape
    # ambient moonlight plus pools of warm lamp light on the ground
    pool = np.zeros((H, W), np.float32)
    ground = ground_mask(lay)
    for lx, lz, lh in lay.lamps:
        r = lh * 1.6
        zmax, zmin = lz + r, max(lz - r, 0.5)
        r0 = max(int(lay.yh + lay.f * lay.hc / zmax), 0)
        r1 = min(int(math.ceil(lay.yh + lay.f * lay.hc / zmin)) + 1, H)
        if r1 <= r0:
            continue
        d2 = (lay.tu[r0:r1] - lx) ** 2 + (lay.tv[r0:r1] - lz) ** 2
        pool[r0:r1] += np.exp(d2 * np.float32(-2.0 / (lh * lh)))
    pool = np.minimum(pool, 1.5) * ground
    tint = np.array([0.13, 0.15, 0.25], np.float32) * rng.uniform(0.8, 1.2)
    lamp = np.array([0.8, 0.64, 0.4], np.float32)
    img = albedo * (tint[:, None, None] + lamp[:, None, None] * pool)
    paint_sky(lay, img, rgb((4, 6, 16))[0], rgb((18, 22, 40))[0])
    # light sources and their glow
    detail = (lay.code >> 3) & (N_DETAILS - 1)
    emissive = _EMITS.take(detail)
    if emissive.any():
        emission = np.take(np.ascontiguousarray(_EMISSION.T), detail, axis=1)
        np.copyto(img, emission, where=emissive)
        img += glow(np.take(np.ascontiguousarray(_GLOW.T), detail, axis=1))
    img *= 1.3
    return finish_image(img, rng, 0.035, gamma=1.15)


def _wet_reflections(lay: Layout, img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Mirror what stands on the ground into road/sidewalk pixels (per column, about each object's foot line)."""
    H, W = lay.label.shape
    on_ground = ground_mask(lay)
    wet = on_ground & (lay.label <= SIDEWALK)
    rows = np.arange(H, dtype=np.int32)[:, None]
    foot = np.maximum.accumulate(np.where(on_ground, -1, rows), axis=0)  # nearest non-ground row above
    ripple = sample_noise(lay.tu, lay.tv, 2.0, rng.uniform(0, 256), rng.uniform(0, 256))
    src = 2 * foot + 1 - rows + (ripple * 6.0).astype(np.int32)
    np.clip(src, 0, H - 1, out=src)
    flat = src * W + np.arange(W, dtype=np.int32)[None, :]
    reflected = np.take(img.reshape(3, -1), flat, axis=1)
    weight = (wet & (foot >= 0)) * np.float32(strength)
    return img * (1 - weight * 0.5) + reflected * weight


def _streaks(shape: tuple[int, int], rng: np.random.Generator, count: int, length: int, slant: float) -> np.ndarray:
    """Thin slanted line segments (rain) as a float mask, drawn by scattering their pixels."""
    H, W = shape
    y0 = rng.integers(-length, H, count)
    x0 = rng.integers(0, W, count)
    k = np.arange(length)
    ys = (y0[:, None] + k[None, :]).ravel()
    xs = ((x0[:, None] + np.round(k * slant).astype(np.int64)[None, :]) % W).ravel()
    keep = (ys >= 0) & (ys < H)
    out = np.zeros(shape, np.float32)
    out[ys[keep], xs[keep]] = 1.0
    return out


def _render_rain(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.15)
    grey = img.mean(axis=0)
    img = img * 0.31 + grey * 0.31
    paint_sky(lay, img, rgb((92, 96, 102))[0], rgb((138, 142, 146))[0], clouds=0.4, rng=rng)
    img = _wet_reflections(lay, img, rng, 0.55)
    t = np.exp(lay.depth * np.float32(-1.0 / rng.uniform(60.0, 120.0)))
    img *= t
    img += 0.45 * (1 - t)
    H, W = lay.label.shape
    img += _streaks((H, W), rng, int(H * W * 0.0035), max(H // 14, 3), rng.uniform(-0.35, 0.35)) * 0.2
    return finish_image(img, rng, 0.02)


def _render_snow(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.3)
    H, W = lay.label.shape
    label = lay.label
    ground = ground_mask(lay)
    lumps = sample_noise_smooth(lay.tu, lay.tv, 1.2, rng.uniform(0, 256), rng.uniform(0, 256))
    grain = sample_noise(lay.tu, lay.tv, 12.0, rng.uniform(0, 256), rng.uniform(0, 256))
    # snow lies on the ground except in the tyre tracks of each lane, and on vegetation and top edges
    xc, half, lane_w = lay.road
    lane_pos = (lay.tu - xc + half) * (1.0 / lane_w)
    in_lane = (lane_pos - np.floor(lane_pos) - 0.5) * lane_w
    tracks = np.abs(np.abs(in_lane) - 0.8) < 0.3
    bias = np.where(label == ROAD, np.where(tracks, 0.15, 0.55), 0.85).astype(np.float32)
    cover = np.clip((lumps + bias) * 2.0, 0.0, 1.0) * ground
    top_edge = np.zeros((H, W), bool)
    top_edge[2:] = (label[2:] != label[:-2]) & (label[2:] != SKY) & ~ground[2:]
    cover = np.maximum(cover, (label == VEGETATION) * np.clip(lumps * 1.5 + 0.4, 0.0, 0.8))
    cover = np.maximum(cover, top_edge * np.float32(0.85))
    snow = np.array([0.9, 0.92, 0.96], np.float32)[:, None, None] - 0.06 * np.abs(lumps) - 0.05 * grain
    img = img * (1 - cover) + snow * cover
    paint_sky(lay, img, rgb((196, 202, 210))[0], rgb((226, 230, 234))[0])
    t = np.exp(lay.depth * np.float32(-1.0 / rng.uniform(50.0, 110.0)))
    img *= t * 0.9
    img += 0.88 * (1 - t)
    # flakes: many small ones and a few bigger near ones
    flakes = np.zeros((H, W), np.float32)
    n = int(H * W * 0.006)
    flakes[rng.integers(0, H, n), rng.integers(0, W, n)] = 0.7
    n = int(H * W * 0.0006)
    fy, fx = rng.integers(0, H - 1, n), rng.integers(0, W - 1, n)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        flakes[fy + dy, fx + dx] = 1.0
    img = img * (1 - flakes) + flakes * np.float32(0.97)
    return finish_image(img, rng, 0.015)


#: Domain name -> painter, one per name of ``SYNTHETIC_DOMAINS`` (a test checks they stay in step).
DOMAIN_PAINTERS: dict[str, Painter] = {
    "synthetic": _render_synthetic,
    "textured": _render_textured,
    "fog": _render_fog,
    "night": _render_night,
    "rain": _render_rain,
    "snow": _render_snow,
}


def check_domain(domain: str) -> None:
    """Raise a :class:`UserError` with the closest name for a domain no painter knows."""
    if domain not in DOMAIN_PAINTERS:
        raise UserError(
            f"unknown synthetic domain '{domain}';{did_you_mean(domain, SYNTHETIC_DOMAINS)} "
            f"domains: {', '.join(SYNTHETIC_DOMAINS)}"
        )


def appearance_rng(seed: int, index: int, domain: str) -> np.random.Generator:
    """The generator domain ``domain`` paints scene ``(seed, index)`` with: its own stream, apart from the layout's."""
    return np.random.default_rng([seed, index, 1 + SYNTHETIC_DOMAINS.index(domain)])


def paint_domain(layout: Layout, seed: int, index: int, domain: str) -> np.ndarray:
    """Paint ``layout`` (the layout of scene ``(seed, index)``) in ``domain``: ``image uint8 [H, W, 3]``.

    The image is a transposed view of a channels-first buffer (``image.transpose(2, 0, 1)`` is contiguous and
    free). With the layout of :func:`~.layout.scene_layout` for the same ``(seed, index)`` it equals
    :func:`~.render.render_scene`'s image, which is what lets ``synthetic-det`` box the very pixels the
    segmentation dataset shows.
    """
    check_domain(domain)
    return DOMAIN_PAINTERS[domain](layout, appearance_rng(seed, index, domain))


__all__ = ["DOMAIN_PAINTERS", "Painter", "appearance_rng", "check_domain", "paint_domain"]
