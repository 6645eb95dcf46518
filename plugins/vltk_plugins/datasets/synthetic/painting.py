"""Painting primitives the domain painters compose: colours, noise textures, sun light, sky, bloom, sensor finish.

Everything works on a :class:`~.layout.Layout` and a float32 channels-first image ``[3, H, W]`` in ``[0, 1]``
(values above 1 are allowed until :func:`finish_image` clips and quantises). Noise is looked up in one tileable
texture built once per process (a gather per pixel instead of per-pixel noise evaluation), at texture
coordinates in surface metres, so textures stick to surfaces and shrink with distance.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from vltk_plugins.datasets.synthetic.codes import (
    BUILDING,
    BUS,
    CAR,
    D_DARK,
    D_GLASS,
    D_GLASS_LIT,
    D_HEAD,
    D_LAMP,
    D_MARK,
    D_PANTS,
    D_SIGN_INNER,
    D_SKIN,
    D_TAIL,
    D_TL_AMBER,
    D_TL_GREEN,
    D_TL_OFF,
    D_TL_RED,
    D_TYRE,
    FENCE,
    N_DETAILS,
    N_FRONT,
    N_GROUND,
    N_GROUND_SHADE,
    N_LEFT,
    N_RIGHT,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)
from vltk_plugins.datasets.synthetic.layout import Layout


def rgb(*colours: tuple[int, int, int]) -> np.ndarray:
    """8-bit RGB triples -> float32 ``[N, 3]`` in ``[0, 1]`` (the painters' colour format)."""
    return np.array(colours, np.float32) / 255.0


# Detail modifiers (multiply, add): a window is still building, a tyre still car.
_DETAIL_MUL = np.ones((N_DETAILS, 3), np.float32)
_DETAIL_ADD = np.zeros((N_DETAILS, 3), np.float32)
for _code, _mul, _add in (
    (D_GLASS, 0.22, (0.10, 0.13, 0.17)),
    (D_GLASS_LIT, 0.22, (0.10, 0.13, 0.17)),
    (D_LAMP, 0.0, (0.86, 0.86, 0.8)),
    (D_TAIL, 0.0, (0.62, 0.06, 0.05)),
    (D_HEAD, 0.0, (0.88, 0.88, 0.84)),
    (D_TL_RED, 0.0, (0.92, 0.12, 0.08)),
    (D_TL_AMBER, 0.0, (0.95, 0.66, 0.1)),
    (D_TL_GREEN, 0.0, (0.12, 0.88, 0.45)),
    (D_TL_OFF, 0.0, (0.14, 0.14, 0.13)),
    (D_MARK, 0.0, (0.86, 0.86, 0.82)),
    (D_TYRE, 0.0, (0.05, 0.05, 0.05)),
    (D_SKIN, 0.0, (0.84, 0.64, 0.5)),
    (D_PANTS, 0.42, (0.02, 0.02, 0.04)),
    (D_DARK, 0.5, (0.0, 0.0, 0.0)),
    (D_SIGN_INNER, 0.0, (0.94, 0.94, 0.94)),
):
    _DETAIL_MUL[_code] = _mul
    _DETAIL_ADD[_code] = _add


# Texture per class for the real domains: finest noise frequency (cycles per metre), fine and patch amplitude.
_TEX_FREQ = np.ones(256, np.float32)
_TEX_FINE = np.zeros(256, np.float32)
_TEX_PATCH = np.zeros(256, np.float32)
for _cls, _freq, _fine, _patch in (
    (ROAD, 4.0, 0.22, 0.28),
    (SIDEWALK, 3.0, 0.2, 0.22),
    (BUILDING, 1.5, 0.22, 0.3),
    (WALL, 2.0, 0.26, 0.26),
    (FENCE, 3.0, 0.24, 0.16),
    (POLE, 2.0, 0.14, 0.12),
    (VEGETATION, 2.2, 0.9, 0.5),
    (TERRAIN, 2.0, 0.55, 0.45),
    (PERSON, 4.0, 0.2, 0.14),
    (RIDER, 4.0, 0.2, 0.14),
    (CAR, 1.5, 0.1, 0.22),
    (TRUCK, 1.5, 0.16, 0.2),
    (BUS, 1.5, 0.14, 0.2),
    (SIGN, 3.0, 0.08, 0.08),
):
    _TEX_FREQ[_cls], _TEX_FINE[_cls], _TEX_PATCH[_cls] = _freq, _fine, _patch

_TILE = 256  # texels per side of the tileable noise texture
_TEXELS_PER_CELL = 4  # the finest octave's lattice cell, in texels


@functools.lru_cache(maxsize=1)
def _texture_tile() -> np.ndarray:
    """A tileable multi-octave value-noise texture (flat, zero mean, std 0.5), built once per process.

    Sampling it with nearest lookups replaces per-pixel noise evaluation: one gather per pixel.
    """
    rng = np.random.default_rng(0x5EED)
    out = np.zeros((_TILE, _TILE), np.float64)
    for amp, cells in zip((0.55, 0.7, 0.85, 1.0, 1.0), (4, 8, 16, 32, _TILE // _TEXELS_PER_CELL), strict=True):
        lattice = rng.random((cells, cells))
        pos = np.arange(_TILE) * (cells / _TILE)
        i0 = pos.astype(np.int64)
        t = pos - i0
        t = t * t * (3.0 - 2.0 * t)
        i1 = (i0 + 1) % cells
        rows = lattice[i0] * (1 - t)[:, None] + lattice[i1] * t[:, None]
        out += amp * (rows[:, i0] * (1 - t)[None, :] + rows[:, i1] * t[None, :])
    out = (out - out.mean()) / out.std() * 0.5
    return out.astype(np.float32).ravel()


@functools.lru_cache(maxsize=1)
def _texture_tile_padded() -> np.ndarray:
    """The tile with its first row and column repeated at the end, so bilinear lookups never wrap."""
    tile = _texture_tile().reshape(_TILE, _TILE)
    return np.pad(tile, ((0, 1), (0, 1)), mode="wrap").ravel()


_OFFSET = 256.0 * 512  # keeps texel coordinates positive, so int truncation is floor


def sample_noise(u: np.ndarray, v: np.ndarray, scale: np.ndarray | float, du: float, dv: float) -> np.ndarray:
    """Nearest lookup of the noise tile at texel coordinates ``(u * scale + du, v * scale + dv)``: for
    minification and fine grain, where a texel is at most a few pixels."""
    iu = (u * scale + (du + _OFFSET)).astype(np.int32)
    iv = (v * scale + (dv + _OFFSET)).astype(np.int32)
    iu &= _TILE - 1
    iv &= _TILE - 1
    iv <<= 8
    iv |= iu
    return _texture_tile().take(iv)


def sample_noise_smooth(u: np.ndarray, v: np.ndarray, scale: np.ndarray | float, du: float, dv: float) -> np.ndarray:
    """Bilinear lookup of the noise tile: for magnified, low-frequency patterns that would look blocky.

    Evaluated on every other pixel and repeated (low-frequency patterns lose nothing, it costs a quarter).
    """
    H, W = u.shape
    if H % 2 == 0 and W % 2 == 0 and H >= 64:
        half = _bilinear(u[::2, ::2], v[::2, ::2], scale[::2, ::2] if isinstance(scale, np.ndarray) else scale, du, dv)
        return np.broadcast_to(half[:, None, :, None], (H // 2, 2, W // 2, 2)).reshape(H, W)
    return _bilinear(u, v, scale, du, dv)


def _bilinear(u: np.ndarray, v: np.ndarray, scale: np.ndarray | float, du: float, dv: float) -> np.ndarray:
    fu = u * scale + (du + _OFFSET)
    fv = v * scale + (dv + _OFFSET)
    iu = fu.astype(np.int32)
    iv = fv.astype(np.int32)
    fu -= iu
    fv -= iv
    iu &= _TILE - 1
    iv &= _TILE - 1
    idx = iv * (_TILE + 1) + iu
    tile = _texture_tile_padded()
    top = tile.take(idx)
    top += (tile.take(idx + 1) - top) * fu
    idx += _TILE + 1
    bottom = tile.take(idx)
    bottom += (tile.take(idx + 1) - bottom) * fu
    return top + (bottom - top) * fv


@functools.lru_cache(maxsize=8)
def _grain_tile(height: int, width: int) -> np.ndarray:
    """Gaussian sensor noise larger than the image; each render reads a window at a random offset."""
    return np.random.default_rng(0x6A1).standard_normal((height + 32, width + 32), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def vignette(height: int, width: int) -> np.ndarray:
    yy = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xx = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    return 1.0 - 0.7 * (xx * xx + yy * yy)


def _downsample4(img: np.ndarray) -> np.ndarray:
    """Sum-pool ``[C, H, W]`` by 4 with strided adds (much faster than reshape + mean)."""
    rows = img[:, 0::4] + img[:, 1::4]
    rows += img[:, 2::4]
    rows += img[:, 3::4]
    out = rows[:, :, 0::4] + rows[:, :, 1::4]
    out += rows[:, :, 2::4]
    out += rows[:, :, 3::4]
    return out * (1.0 / 16.0)


def _blur_small(img: np.ndarray, passes: int = 2) -> np.ndarray:
    """[1, 2, 1] blur along both spatial axes of a small ``[C, h, w]`` map, ``passes`` times."""
    for _ in range(passes):
        p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
        img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
        img = (img[:, :, :-2] + 2 * img[:, :, 1:-1] + img[:, :, 2:]) * 0.25
    return img


def _upsample4(img: np.ndarray) -> np.ndarray:
    """Bilinear ×4 upsampling of ``[C, h, w]`` (edge-clamped), as strided interleaves."""
    c, h, w = img.shape
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    rows = np.empty((c, h, 4, w), np.float32)
    for k, t in enumerate((0.375, 0.125, 0.125, 0.375)):
        rows[:, :, k] = p[:, 1:-1] * (1 - t) + (p[:, :-2] if k < 2 else p[:, 2:]) * t
    rows = rows.reshape(c, 4 * h, w)
    p = np.pad(rows, ((0, 0), (0, 0), (1, 1)), mode="edge")
    out = np.empty((c, 4 * h, w, 4), np.float32)
    for k, t in enumerate((0.375, 0.125, 0.125, 0.375)):
        out[:, :, :, k] = p[:, :, 1:-1] * (1 - t) + (p[:, :, :-2] if k < 2 else p[:, :, 2:]) * t
    return out.reshape(c, 4 * h, 4 * w)


def glow(emission: np.ndarray) -> np.ndarray:
    """Wide soft halo around light sources (bloom), computed at quarter resolution."""
    H, W = emission.shape[1:]
    if H % 4 or W % 4:
        return np.zeros_like(emission)
    return _upsample4(_blur_small(_downsample4(emission) * 3.0, 3))


def instance_albedo(lay: Layout, palette: dict[int, np.ndarray], jitter: float) -> np.ndarray:
    """Per-instance colour (picked by the instance's layout key) with details applied: float32 ``[3, H, W]``."""
    n = len(lay.inst_class)
    colours = np.empty((n, 3), np.float32)
    for cls in np.unique(lay.inst_class):
        members = np.nonzero(lay.inst_class == cls)[0]
        options = palette[int(cls)]
        choice = (lay.inst_key[members, 0] * len(options)).astype(np.int64)
        colours[members] = options[choice] * (1.0 + jitter * (lay.inst_key[members, 1:2] * 2.0 - 1.0))
    table = colours[:, None, :] * _DETAIL_MUL[None] + _DETAIL_ADD[None]  # [instance, detail, rgb]
    table = np.ascontiguousarray(table.reshape(n * N_DETAILS, 3).T)
    return np.take(table, lay.code >> 3, axis=1)


def ground_mask(lay: Layout) -> np.ndarray:
    """Pixels of the ground plane (road, sidewalk, terrain), in sun or in shade."""
    normal = lay.code & 7
    return (normal == N_GROUND) | (normal == N_GROUND_SHADE)


def sun_factor(lay: Layout, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-pixel sun factor from the surface orientation (and the facades' shade on the ground)."""
    lit = rng.uniform(0.7, 1.0)
    factors = np.ones(8, np.float32)
    factors[N_LEFT] = 1.0 - 0.38 * lit * strength
    factors[N_RIGHT] = 1.0 - 0.38 * (1.0 - lit) * strength
    factors[N_FRONT] = 1.0 - 0.12 * strength
    factors[N_GROUND_SHADE] = 1.0 - 0.4 * strength
    return factors.take(lay.code & 7)


def paint_sky(
    lay: Layout,
    img: np.ndarray,
    top: np.ndarray,
    horizon: np.ndarray,
    clouds: float = 0.0,
    rng: np.random.Generator | None = None,
) -> None:
    """In place: sky pixels get a vertical gradient (and optional clouds); only rows above the horizon."""
    rows = min(int(math.ceil(lay.yh)) + 1, img.shape[1])
    sky = lay.label[:rows] == SKY
    t = np.clip((np.arange(rows, dtype=np.float32) + 0.5) / max(lay.yh, 1.0), 0.0, 1.0)
    grad = top[:, None, None] * (1 - t)[None, :, None] + horizon[:, None, None] * t[None, :, None]
    if clouds > 0 and rng is not None:
        puff = sample_noise_smooth(lay.tu[:rows], lay.tv[:rows] * 3.0, 4.0, rng.uniform(0, 256), rng.uniform(0, 256))
        cover = np.clip((puff + 0.05) * 2.0, 0.0, 1.0) * clouds * (1 - t[:, None] * 0.5)
        grad = grad * (1 - cover) + np.float32(0.9) * cover
    np.copyto(img[:, :rows], grad, where=sky)


def texture_factor(lay: Layout, rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    """Class-dependent multiplicative texture in surface coordinates, faded where it would alias."""
    freq = _TEX_FREQ.take(lay.label)
    scale = freq * _TEXELS_PER_CELL
    fine = sample_noise(lay.tu, lay.tv, scale, rng.uniform(0, 256), rng.uniform(0, 256))
    patch = sample_noise_smooth(lay.tu, lay.tv, scale * 0.2, rng.uniform(0, 256), rng.uniform(0, 256))
    fade = np.clip(1.3 - lay.depth * freq * (0.6 / lay.f), 0.3, 1.0)
    return 1.0 + gain * (fine * _TEX_FINE.take(lay.label) * fade + patch * _TEX_PATCH.take(lay.label))


def finish_image(img: np.ndarray, rng: np.random.Generator, noise: float, gamma: float = 1.0) -> np.ndarray:
    """Sensor noise, quantisation and gamma: ``[3, H, W]`` float -> ``[H, W, 3]`` uint8 (a transposed view)."""
    H, W = img.shape[1:]
    if noise > 0:
        oy, ox = rng.integers(0, 32, 2)
        img = img + _grain_tile(H, W)[oy : oy + H, ox : ox + W] * noise
    img = img * 255.0
    np.clip(img, 0.0, 255.0, out=img)
    out = img.astype(np.uint8)
    if gamma != 1.0:
        lut = (255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8)
        out = lut.take(out)
    return out.transpose(1, 2, 0)


__all__ = [
    "finish_image",
    "glow",
    "ground_mask",
    "instance_albedo",
    "paint_sky",
    "rgb",
    "sample_noise",
    "sample_noise_smooth",
    "sun_factor",
    "texture_factor",
    "vignette",
]
