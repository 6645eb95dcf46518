"""The built-in ``synthetic`` dataset: procedural street scenes in six appearance domains, nothing to download.

Why it exists: tests, tutorials and CI need a domain-generalisation benchmark that runs anywhere in seconds.
Every scene is a pinhole-camera view of a street (ground plane with road, sidewalks and terrain; facades and
vegetation on planes parallel to the road; billboards for cars, people, poles, signs and lights), so there is a
horizon, a vanishing point, objects shrink with distance and nearer things occlude farther ones (a z-buffer).

The *layout* (label map, depth, instance ids, texture coordinates) depends only on ``(seed, index)`` through
``numpy.random.default_rng([seed, index])``; the *appearance* depends on the domain as well. So the same scene
in ``synthetic`` (flat GTAV-like colours), ``textured``, ``fog``, ``night``, ``rain`` and ``snow`` has exactly
the same labels, and a model trained on the source domain meets a real appearance shift on the others.
Everything is vectorised numpy: a 256x256 sample renders in about 7-13 ms (128x128: about 5-6 ms) on one core.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vltk.api import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    DenseDataSource,
    DenseSample,
    UserError,
    did_you_mean,
)
from vltk.data.base import colorize as colorize_with
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET, SyntheticOptions

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS,
 TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
NONE = 255  # "no surface here" in segment tables

# Surface details: appearance modifiers that keep the class label (a car window is still "car").
(D_NONE, D_GLASS, D_GLASS_LIT, D_LAMP, D_TAIL, D_HEAD, D_TL_RED, D_TL_AMBER, D_TL_GREEN, D_TL_OFF, D_MARK, D_TYRE,
 D_SKIN, D_PANTS, D_DARK, D_SIGN_INNER) = range(16)  # fmt: skip
N_DETAILS = 16

# Surface orientation, for sun shading: which way a pixel's surface faces.
N_SKY, N_GROUND, N_LEFT, N_RIGHT, N_FRONT, N_GROUND_SHADE = range(6)

SKY_DEPTH = 1.0e4


# --------------------------------------------------------------------------------------------------------------
# Layout: geometry and labels, shared by every domain.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """What appearance needs: per-pixel class, packed instance/detail/orientation code, depth, texture coords.

    ``code`` packs ``(instance << 7) | (detail << 3) | orientation`` so one int32 map carries all three, and
    ``code >> 3`` indexes a per-(instance, detail) colour table directly.
    """

    label: np.ndarray  # uint8 [H, W]
    code: np.ndarray  # int32 [H, W]
    depth: np.ndarray  # float32 [H, W], metres; SKY_DEPTH for sky
    tu: np.ndarray  # float32 [H, W] texture coordinate (metres along the surface)
    tv: np.ndarray  # float32 [H, W]
    inst_class: np.ndarray  # int64 [N] class of every instance
    inst_key: np.ndarray  # float32 [N, 2] per-instance random keys (colour choice, brightness jitter)
    f: float
    xv: float
    yh: float
    hc: float
    road: tuple[float, float, float] = (0.0, 3.5, 3.5)  # road centre X, half width, lane width
    lamps: list[tuple[float, float, float]] = field(default_factory=list)  # (X, z, height) of street lamps


class _Canvas:
    """Z-buffered drawing of a pinhole camera's view: surfaces and camera-facing billboards in world metres.

    World frame: X to the right, Y up from the ground, z forward (depth). The camera sits at height ``hc``;
    a world point projects to ``x = xv + f X / z``, ``y = yh + f (hc - Y) / z``.
    """

    def __init__(self, height: int, width: int, f: float, xv: float, yh: float, hc: float, rng: np.random.Generator):
        self.H, self.W = height, width
        self.f, self.xv, self.yh, self.hc = f, xv, yh, hc
        self.rng = rng
        self.xs = np.arange(width, dtype=np.float32) + 0.5
        self.ys = np.arange(height, dtype=np.float32) + 0.5
        self.label = np.full((height, width), SKY, np.uint8)
        self.code = np.full((height, width), N_SKY, np.int32)
        self.depth = np.full((height, width), SKY_DEPTH, np.float32)
        self.tu = np.empty((height, width), np.float32)
        self.tv = np.empty((height, width), np.float32)
        self.tu[:] = self.xs[None, :] * (8.0 / width)  # sky: screen coordinates
        self.tv[:] = self.ys[:, None] * (8.0 / height)
        self.inst_class: list[int] = [SKY]

    def new_instance(self, cls: int) -> int:
        self.inst_class.append(cls)
        return len(self.inst_class) - 1

    def billboard(
        self, z: float, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixels covering the world rectangle ``X in [x0, x1], Y in [y0, y1]`` at depth ``z`` (facing the camera).

        Returns the slices and the world coordinates of pixel centres (``X`` per column, ``Y`` per row), or
        None when the rectangle is off-screen.
        """
        if z <= 0.3:
            return None
        k = self.f / z
        c0 = max(int(math.floor(self.xv + k * x0)), 0)
        c1 = min(int(math.ceil(self.xv + k * x1)), self.W)
        r0 = max(int(math.floor(self.yh + k * (self.hc - y1))), 0)
        r1 = min(int(math.ceil(self.yh + k * (self.hc - y0))), self.H)
        if c1 <= c0 or r1 <= r0:
            return None
        xw = (self.xs[c0:c1] - self.xv) / k
        yw = self.hc - (self.ys[r0:r1] - self.yh) / k
        return (slice(r0, r1), slice(c0, c1)), xw, yw

    def paint(
        self,
        where: tuple[slice, slice],
        mask: np.ndarray,
        z: float | np.ndarray,
        cls: int,
        inst: int,
        detail: int | np.ndarray = D_NONE,
        tu: np.ndarray | None = None,
        tv: np.ndarray | None = None,
        normal: int = N_FRONT,
    ) -> None:
        """Write the ``mask`` pixels that are nearer than what is already there (the z-buffer test)."""
        depth = self.depth[where]
        m = np.less(z, depth)
        m &= mask
        if not m.any():
            return
        np.copyto(depth, z, where=m)
        np.copyto(self.label[where], cls, where=m)
        code = (inst << 7) | normal
        if isinstance(detail, np.ndarray):
            code = (detail.astype(np.int32) << 3) | code
        else:
            code |= detail << 3
        np.copyto(self.code[where], code, where=m, casting="unsafe")
        if tu is not None and tv is not None:
            np.copyto(self.tu[where], tu, where=m, casting="unsafe")
            np.copyto(self.tv[where], tv, where=m, casting="unsafe")

    def rect(
        self, z: float, x0: float, x1: float, y0: float, y1: float, cls: int, inst: int, detail: int = D_NONE
    ) -> None:
        """A plain camera-facing rectangle (poles, arms, lamp heads)."""
        box = self.billboard(z, x0, x1, y0, y1)
        if box is None:
            return
        where, xw, yw = box
        mask = ((xw >= x0) & (xw <= x1))[None, :] & ((yw >= y0) & (yw <= y1))[:, None]
        self.paint(where, mask, z, cls, inst, detail, xw[None, :], yw[:, None])

    def side_face(
        self, x_plane: float, z0: float, z1: float, top: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixels of the plane ``X = x_plane`` for ``z in [z0, z1]``, ``Y in [0, top]`` (parallel to the road).

        Returns slices, depth per column ``[1, w]`` and world height ``Y`` per pixel ``[h, w]``.
        """
        if abs(x_plane) < 0.05 or z0 <= 0.3:
            return None
        xa, xb = self.xv + self.f * x_plane / z0, self.xv + self.f * x_plane / z1
        c0 = max(int(math.floor(min(xa, xb))), 0)
        c1 = min(int(math.ceil(max(xa, xb))), self.W)
        r0 = max(int(math.floor(self.yh + self.f * (self.hc - top) / z0)), 0)
        r1 = min(int(math.ceil(self.yh + self.f * self.hc / z0)), self.H)
        if c1 <= c0 or r1 <= r0:
            return None
        dx = self.xs[c0:c1] - self.xv
        ok = dx * x_plane > 0
        zc = np.where(ok, self.f * x_plane / np.where(ok, dx, 1.0), 1.0e5).astype(np.float32)
        yw = self.hc - (self.ys[r0:r1, None] - self.yh) * (zc[None, :] / self.f)
        return (slice(r0, r1), slice(c0, c1)), zc[None, :], yw


def _segments(
    rng: np.random.Generator,
    kinds: dict[int, float],
    heights: dict[int, tuple[float, float]],
    z_end: float,
    length: tuple[float, float],
) -> np.ndarray:
    """Consecutive stretches of one facade line: rows ``(z_start, class, height, key)`` up to ``z_end``."""
    z_end = min(z_end, 400.0)  # farther stretches are below a pixel
    classes = np.array(list(kinds), np.float64)
    cumulative = np.cumsum(list(kinds.values()))
    cumulative /= cumulative[-1]
    lo, hi = np.array([heights.get(int(c), (0.0, 0.0)) for c in classes]).T
    n = int(z_end / length[0]) + 2
    starts = np.concatenate([[0.0], np.cumsum(rng.uniform(length[0], length[1], n - 1))])
    pick = np.minimum(np.searchsorted(cumulative, rng.random(n)), len(classes) - 1)
    height = lo[pick] + (hi[pick] - lo[pick]) * rng.random(n)
    rows = np.stack([starts, classes[pick], height, 1000.0 * rng.random(n)], axis=1)[starts < z_end]
    return np.concatenate([rows, [[z_end, NONE, 0.0, 0.0]]])


_SCENES = {
    # front facade line: class -> probability; back line likewise
    "city": (
        {BUILDING: 0.78, VEGETATION: 0.08, WALL: 0.06, FENCE: 0.05, NONE: 0.03},
        {BUILDING: 0.85, VEGETATION: 0.15},
    ),
    "suburb": (
        {WALL: 0.25, FENCE: 0.25, VEGETATION: 0.3, NONE: 0.1, BUILDING: 0.1},
        {BUILDING: 0.6, VEGETATION: 0.4},
    ),
    "rural": (
        {VEGETATION: 0.45, NONE: 0.25, FENCE: 0.15, WALL: 0.1, BUILDING: 0.05},
        {VEGETATION: 0.75, NONE: 0.15, BUILDING: 0.1},
    ),
}

_HEIGHTS = {
    "city": ({BUILDING: (7.0, 26.0), VEGETATION: (4.0, 9.0), WALL: (1.2, 3.0), FENCE: (1.0, 2.2)},
             {BUILDING: (14.0, 40.0), VEGETATION: (8.0, 14.0)}),
    "suburb": ({BUILDING: (5.0, 9.0), VEGETATION: (1.2, 6.0), WALL: (0.8, 1.8), FENCE: (0.9, 1.8)},
               {BUILDING: (5.0, 10.0), VEGETATION: (5.0, 12.0)}),
    "rural": ({BUILDING: (4.0, 8.0), VEGETATION: (2.0, 9.0), WALL: (0.8, 1.6), FENCE: (0.9, 1.6)},
              {BUILDING: (4.0, 9.0), VEGETATION: (6.0, 15.0)}),
}  # fmt: skip

#: Which windows are lit at night: a fixed pseudo-random table indexed by a hash of the window cell.
_LIT = np.random.default_rng(4242).random(1024) < 0.33


def _windows(
    along: np.ndarray,
    up: np.ndarray,
    spacing: np.ndarray | float,
    floor: np.ndarray | float,
    key: np.ndarray | float,
    footprint: np.ndarray | float,
    building: np.ndarray | bool,
) -> np.ndarray | None:
    """Window details on facades: ``along`` per column ``[1, w]``, ``up`` per pixel ``[h, w]`` (metres).

    Returns a uint8 detail map (glass, or glass lit at night; ground-floor shop windows are always lit) or None
    when no column can show a window. Windows fade out where they would be smaller than a pixel.
    """
    a = along / spacing
    ia = np.floor(a)
    fa = a - ia
    col_win = building & (fa > 0.3) & (fa < 0.75) & (footprint < 0.45 * spacing)
    col_shop = building & (fa > 0.1) & (fa < 0.9) & (key > 600.0) & (footprint < 0.8)
    if not (np.any(col_win) or np.any(col_shop)):
        return None
    b = (up - 0.4) / floor
    ib = np.floor(b)
    fb = b - ib
    win = col_win & (fb > 0.3) & (fb < 0.8) & (up > 2.8)
    cell = (ia.astype(np.int32) * 31 + ib.astype(np.int32) * 7 + np.asarray(key).astype(np.int32)) & 1023
    lit = _LIT.take(cell)
    shop = col_shop & (up > 0.5) & (up < 2.4)
    return (win * (D_GLASS + lit) + shop * D_GLASS_LIT).astype(np.uint8)


def _layout(seed: int, index: int, size: tuple[int, int]) -> _Layout:
    """Draw the scene geometry and labels for ``(seed, index)``: independent of the domain by construction."""
    rng = np.random.default_rng([seed, index])
    H, W = size
    fov = math.radians(rng.uniform(50.0, 72.0))
    f = W / (2.0 * math.tan(fov / 2.0))
    hc = rng.uniform(1.3, 1.8)
    yh = H * rng.uniform(0.4, 0.52)
    xv = W * (0.5 + rng.uniform(-0.07, 0.07))
    cv = _Canvas(H, W, f, xv, yh, hc, rng)
    roll = rng.random()
    scene = "city" if roll < 0.55 else ("suburb" if roll < 0.85 else "rural")

    # --- street cross-section (metres from the road centre line; index 0 = left side, 1 = right side) ---
    lanes = (2, 2, 3, 4, 4)[int(rng.integers(5))] if scene != "rural" else 2
    lane_w = rng.uniform(3.0, 3.6)
    half = lanes * lane_w / 2.0
    own = int(rng.integers(lanes // 2, lanes))
    xc = half - (own + 0.5) * lane_w + rng.uniform(-0.3, 0.3)  # road centre in camera coordinates
    parking = [scene == "city" and rng.random() < 0.6, scene != "rural" and rng.random() < 0.5]
    edge = [half + (2.2 if parking[s] else 0.0) for s in range(2)]
    if scene == "city":
        walk = [rng.uniform(2.5, 5.5), rng.uniform(2.5, 5.5)]
        grass = [0.0 if rng.random() < 0.7 else rng.uniform(1.0, 3.0) for _ in range(2)]
    elif scene == "suburb":
        walk = [rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0)]
        grass = [rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)]
    else:
        walk = [rng.uniform(0.0, 1.2), rng.uniform(0.0, 1.2)]
        grass = [rng.uniform(2.0, 8.0), rng.uniform(2.0, 8.0)]
    front = [edge[s] + walk[s] + grass[s] for s in range(2)]
    back = [front[s] + (rng.uniform(2.0, 8.0) if scene == "suburb" else rng.uniform(6.0, 18.0)) for s in range(2)]

    has_cross = scene != "rural" and rng.random() < 0.5
    z_cross0 = rng.uniform(14.0, 45.0) if has_cross else -1.0
    z_cross1 = z_cross0 + rng.uniform(9.0, 16.0) if has_cross else -1.0
    z_end = rng.uniform(60.0, 110.0) if scene == "city" and rng.random() < 0.3 else rng.uniform(150.0, 320.0)
    if scene == "rural" and rng.random() < 0.7:
        z_end = 1.0e3  # open country: the ground runs to the horizon

    # --- ground plane: road, sidewalk, terrain, markings (rows below the horizon) ---
    dy = cv.ys - yh
    zg = np.where(dy > 0.25, f * hc / np.maximum(dy, 0.25), SKY_DEPTH).astype(np.float32)
    r0 = int(np.searchsorted(-zg, -z_end, side="right"))  # first row nearer than the end of the street
    zr = zg[r0:, None]
    xg = (cv.xs[None, :] - xv) * (zr / f)  # camera-relative X of the ground point
    xr = xg - xc  # relative to the road centre
    right = xr >= 0
    a = np.abs(xr)
    walk_limit = np.where(right, edge[1] + walk[1], edge[0] + walk[0])
    road_limit = np.where(right, edge[1], edge[0])
    lab = np.full(a.shape, TERRAIN, np.uint8)
    lab[a < walk_limit] = SIDEWALK
    lab[a < road_limit] = ROAD
    m = (xr + half) * (1.0 / lane_w)
    k = np.floor(m + 0.5)
    dash = (zr - np.floor(zr * (1 / 9.0)) * 9.0) < 3.5
    mark = (np.abs(m - k) * lane_w < 0.08) & (k >= 1) & (k <= lanes - 1) & dash
    if lanes % 2 == 0:
        mark |= a < 0.08  # solid centre line
    mark |= np.abs(a - half + 0.25) < 0.07  # edge lines

    def rows_between(z_lo: float, z_hi: float) -> slice:  # rows of the ground block with z in [z_lo, z_hi]
        neg = -zg[r0:]
        return slice(int(np.searchsorted(neg, -z_hi)), int(np.searchsorted(neg, -z_lo, side="right")))

    if has_cross:
        cross_walk = rng.uniform(2.0, 4.0)
        outside = a >= road_limit
        for band in (rows_between(z_cross0 - cross_walk, z_cross0), rows_between(z_cross1, z_cross1 + cross_walk)):
            lab[band][outside[band]] = SIDEWALK
        inside = rows_between(z_cross0, z_cross1)
        lab[inside] = ROAD
        mark[inside] = False
        zebra = rows_between(z_cross0 - 4.5, z_cross0 - 1.0)
        mark[zebra] = (a[zebra] < half) & ((xr[zebra] - np.floor(xr[zebra])) < 0.5)
        stop = rows_between(z_cross0 - 5.4, z_cross0 - 5.0)
        mark[stop] |= right[stop] & (a[stop] < half)
    mark &= lab == ROAD
    ground_inst = np.zeros(256, np.int32)
    for c in (ROAD, SIDEWALK, TERRAIN):
        ground_inst[c] = cv.new_instance(c)
    # shade of the facades on the ground on one side (appearance uses it; labels do not)
    sun_side = int(rng.integers(2))
    shadow_width = rng.uniform(3.0, 12.0) if scene == "city" else rng.uniform(0.0, 3.0)
    ground_code = (ground_inst.take(lab) << 7) | (mark.astype(np.int32) * (D_MARK << 3)) | N_GROUND
    cv.label[r0:] = lab
    cv.code[r0:] = ground_code
    cv.depth[r0:] = zr
    cv.tu[r0:] = xg
    cv.tv[r0:] = zr

    # --- facade lines parallel to the road: back line first, front line over it ---
    kinds_front, kinds_back = _SCENES[scene]
    heights_front, heights_back = _HEIGHTS[scene]
    faces: list[tuple[float, float, float, float, int, int]] = []  # z, x0, x1, top, class, instance
    cxv = min(max(int(math.floor(xv)), 0), W)
    for line, (kinds, heights, dist, seglen) in enumerate(
        ((kinds_back, heights_back, back, (15.0, 45.0)), (kinds_front, heights_front, front, (8.0, 30.0)))
    ):
        for s in range(2):
            segs = _segments(rng, kinds, heights, z_end, seglen)
            instances = np.array([cv.new_instance(int(c)) if c != NONE else 0 for c in segs[:, 1]], np.int32)
            sign = -1.0 if s == 0 else 1.0
            x_plane = xc + sign * dist[s]
            if x_plane * sign <= 0.2:  # the camera is outside this line: nothing to draw
                continue
            _facade_line(cv, segs, instances, x_plane, sign, (0, cxv) if s == 0 else (cxv, W), z_end,
                         (z_cross0, z_cross1) if has_cross else None)  # fmt: skip
            if line == 1 and s == sun_side and shadow_width > 0:
                zrow = zg[r0:]
                sidx = np.clip(np.searchsorted(segs[:, 0], zrow, side="right") - 1, 0, len(segs) - 1)
                tall = np.isin(segs[sidx, 1], (BUILDING, VEGETATION))[:, None]
                ground_block = cv.code[r0:]
                shade = tall & (xr * sign > dist[s] - shadow_width) & (ground_block & 7 == N_GROUND)
                ground_block[shade] = (ground_block[shade] & ~7) | N_GROUND_SHADE
            # building ends facing the camera, visible where the previous stretch is lower
            for i in range(len(segs) - 1):
                c, h = int(segs[i, 1]), segs[i, 2]
                prev_h = segs[i - 1, 2] if i > 0 and segs[i - 1, 1] != NONE else 0.0
                starts = [(segs[i, 0], prev_h)]
                if has_cross:
                    if segs[i, 0] < z_cross1 + 0.5 < segs[i + 1, 0]:
                        starts.append((z_cross1 + 0.5, 0.0))
                    starts = [(z0, p) for z0, p in starts if not z_cross0 - 0.5 <= z0 < z_cross1 + 0.5]
                for z0, p in starts:
                    if c in (BUILDING, WALL, VEGETATION) and h > p + 0.5 and 1.0 < z0 < z_end:
                        span = rng.uniform(8.0, 16.0) if line == 1 else 20.0
                        x0, x1 = sorted((x_plane, x_plane + sign * span))
                        faces.append((z0, x0, x1, h, c, int(instances[i])))

    for z0, x0, x1, h, c, inst in faces:
        box = cv.billboard(z0, x0, x1, 0.0, h)
        if box is None:
            continue
        where, xw, yw = box
        mask = ((xw >= x0) & (xw <= x1))[None, :] & ((yw >= 0) & (yw <= h))[:, None]
        det = None
        if c == BUILDING and where[1].stop - where[1].start >= 3:
            det = _windows(xw[None, :], yw[:, None], 3.4, 3.1, float(inst * 7.3 % 1000), z0 / f, True)
        cv.paint(where, mask, z0, c, inst, D_NONE if det is None else det, xw[None, :], yw[:, None])

    # --- end of the street: a skyline across the whole view ---
    if z_end < 900:  # only the visible span (in world units, so the random stream is size-independent)
        x_end = -z_end * xv / f - 5.0
        while x_end < z_end * (W - xv) / f + 5.0:
            width = rng.uniform(10.0, 35.0)
            c = BUILDING if rng.random() < (0.8 if scene == "city" else 0.35) else VEGETATION
            h = rng.uniform(8.0, 45.0) if c == BUILDING else rng.uniform(6.0, 14.0)
            cv.rect(z_end, x_end, x_end + width, 0.0, h, c, cv.new_instance(c))
            x_end += width

    # --- objects ---
    lamps: list[tuple[float, float, float]] = []
    _place_objects(cv, rng, scene, xc, half, lane_w, lanes, edge, walk, grass, parking,
                   (z_cross0, z_cross1) if has_cross else None, z_end, lamps)  # fmt: skip

    keys = rng.random((len(cv.inst_class), 2), dtype=np.float32)
    return _Layout(
        label=cv.label, code=cv.code, depth=cv.depth, tu=cv.tu, tv=cv.tv, inst_class=np.array(cv.inst_class),
        inst_key=keys, f=f, xv=xv, yh=yh, hc=hc, road=(xc, half, lane_w), lamps=lamps,
    )  # fmt: skip


def _facade_line(
    cv: _Canvas,
    segs: np.ndarray,
    instances: np.ndarray,
    x_plane: float,
    sign: float,
    cols: tuple[int, int],
    z_end: float,
    cross: tuple[float, float] | None,
) -> None:
    """Paint one facade line (the plane ``X = x_plane``) over the columns on its side of the vanishing point.

    Every column sees the plane at one depth, so segment lookup, heights and window columns are 1-D; only the
    height test is per pixel. Surfaces drawn before are farther (ground beyond, back line), so no z-test.
    """
    c0, c1 = cols
    if c1 <= c0:
        return
    f, hc, yh = cv.f, cv.hc, cv.yh
    dx = cv.xs[c0:c1] - cv.xv
    ok = dx * sign > 0.5
    zc = np.where(ok, f * x_plane / np.where(ok, dx, 1.0), 1.0e5).astype(np.float32)
    idx = np.clip(np.searchsorted(segs[:, 0], zc, side="right") - 1, 0, len(segs) - 1)
    cls = segs[idx, 1].astype(np.int64)
    top = segs[idx, 2].astype(np.float32)
    key = segs[idx, 3].astype(np.float32)
    hidden = ~ok | (zc >= z_end)
    if cross is not None:
        hidden |= (zc >= cross[0] - 0.5) & (zc <= cross[1] + 0.5)
    cls[hidden] = NONE
    veg = cls == VEGETATION
    top = np.where(veg, top * (1 + 0.18 * np.sin(zc * 0.9 + key) + 0.1 * np.sin(zc * 2.7 + key * 3)), top)
    top[cls == NONE] = -1.0
    visible = np.nonzero(top > 0)[0]
    if len(visible) == 0:
        return
    k = f / zc
    r0 = max(int(np.floor(np.min(yh - (top[visible] - hc) * k[visible]))), 0)
    r1 = min(int(np.ceil(np.max(yh + hc * k[visible]))), cv.H)
    if r1 <= r0:
        return
    yw = hc - (cv.ys[r0:r1, None] - yh) / k[None, :]
    hit = (yw >= 0) & (yw < top[None, :])
    fence = cls == FENCE
    if fence.any():
        open_col = ~fence | ((zc * 3.0 - np.floor(zc * 3.0)) < 0.4) | ((zc - np.floor(zc / 2.5) * 2.5) < 0.12)
        rail = (np.abs(yw - top * 0.85) < 0.06) | (np.abs(yw - top * 0.3) < 0.06)
        hit &= open_col[None, :] | rail
    where = (slice(r0, r1), slice(c0, c1))
    details = _windows(zc[None, :], yw, 3.2 + key % 1.3, 3.0 + key % 0.6, key, 1.0 / k, cls == BUILDING)
    code = (instances[idx] << 7) | (N_LEFT if sign < 0 else N_RIGHT)
    code = code[None, :] if details is None else (details.astype(np.int32) << 3) | code[None, :]
    np.copyto(cv.label[where], cls.astype(np.uint8)[None, :], where=hit)
    np.copyto(cv.code[where], code, where=hit)
    np.copyto(cv.depth[where], zc[None, :], where=hit)
    np.copyto(cv.tu[where], zc[None, :], where=hit)
    np.copyto(cv.tv[where], yw, where=hit)


# --------------------------------------------------------------------------------------------------------------
# Objects: each is drawn as billboards (and side faces for vehicles) through the canvas' z-buffer. Every random
# parameter is drawn before any visibility test, so the random stream (hence the scene) does not depend on the
# image size; objects only a few pixels tall are drawn as plain boxes (level of detail).
# --------------------------------------------------------------------------------------------------------------

_LOD_PIXELS = 7.0  # below this projected height, shapes are boxes: details would be sub-pixel anyway


def _vehicle(cv: _Canvas, x: float, z: float, kind: int, facing_away: bool, length: float | None = None) -> None:
    """A car/truck/bus: the near face (rear or front) plus the side face the camera sees."""
    rng = cv.rng
    inst = cv.new_instance(kind)
    if kind == CAR:
        w, h, L = rng.uniform(1.7, 1.95), (1.45, 1.55, 1.75, 2.0)[int(rng.integers(4))], rng.uniform(4.0, 5.0)
    elif kind == TRUCK:
        w, h, L = 2.5, rng.uniform(3.0, 3.8), rng.uniform(7.0, 10.0)
    else:
        w, h, L = 2.55, rng.uniform(3.0, 3.3), rng.uniform(11.0, 13.0)
    L = length or L
    hw = w / 2
    lights = D_TAIL if facing_away else D_HEAD
    if cv.f * h / z < _LOD_PIXELS:
        cv.rect(z, x - hw, x + hw, 0.2, h * 0.9, kind, inst)
        return
    # side face first: it is farther than the near face, the z-buffer keeps the near face in front
    x_side = x - hw if x > hw else (x + hw if x < -hw else None)
    face = cv.side_face(x_side, z, z + L, h) if x_side is not None else None
    if face is not None:
        where, zc, yw = face
        s = zc - z
        sl = s if facing_away else L - s  # measured from the rear
        inside = (s >= 0) & (s <= L)
        if kind == CAR:
            rise = yw - 0.95
            body = (yw > 0.28) & (yw < 0.95) & (sl > 0.05) & (sl < L - 0.05)
            cab = (rise >= 0) & (yw < h) & (sl > 0.22 * L + rise * 0.5) & (sl < 0.75 * L - rise * 1.1)
            glass = cab & (yw > 1.02) & (yw < h - 0.07)
            wheel_y = (yw - 0.33) ** 2
            wheel = ((sl - 0.85) ** 2 + wheel_y < 0.1) | ((sl - (L - 0.95)) ** 2 + wheel_y < 0.1)
            mask = inside & (body | cab | wheel)
        else:
            cabin_len = 2.3 if kind == TRUCK else 0.0
            body = (yw > 0.4) & (yw < h) & (sl > 0.05) & (sl < L - 0.05)
            if kind == TRUCK:
                body &= (sl < L - cabin_len) | (yw < h - 0.5)
            wheel_y = (yw - 0.5) ** 2
            wheel = ((sl - 1.3) ** 2 + wheel_y < 0.25) | ((sl - (L - 1.5)) ** 2 + wheel_y < 0.25)
            glass = (yw > h * 0.48) & (yw < h * 0.82) & ((sl - np.floor(sl / 1.6) * 1.6) > 0.2) & (sl > 0.5)
            if kind == TRUCK:
                glass &= sl > L - cabin_len + 0.4
            mask = inside & (body | wheel)
        det = np.where(wheel, D_TYRE, np.where(glass, D_GLASS, D_NONE))
        cv.paint(where, mask, zc, kind, inst, det, zc, yw, normal=N_LEFT if x_side < 0 else N_RIGHT)
    box = cv.billboard(z, x - hw, x + hw, 0.0, h)
    if box is None:
        return
    where, xw, yw = box
    X = np.abs(xw - x)[None, :]
    Y = yw[:, None]
    if kind == CAR:
        body = (X < hw) & (Y > 0.22) & (Y < 0.95 - 0.25 * np.clip((X - hw + 0.2) * 5.0, 0, 1))
        cab_half = hw - 0.15 - (Y - 0.95) * 0.45
        cab = (Y >= 0.9) & (Y < h) & (X < cab_half)
        wheel = (Y < 0.32) & (X > hw - 0.36) & (X < hw - 0.06)
        glass = cab & (Y > 1.02) & (Y < h - 0.08) & (X < cab_half - 0.07)
        lamp = (Y > 0.68) & (Y < 0.84) & (X > hw - 0.42) & (X < hw - 0.08)
        bumper = (Y > 0.24) & (Y < 0.4)
        mask = body | cab | wheel
        det = np.select([wheel, glass, lamp, bumper], [D_TYRE, D_GLASS, lights, D_DARK])
    else:
        body = (X < hw) & (Y > 0.35) & (Y < h)
        wheel = (Y < 0.45) & (X > hw - 0.5) & (X < hw - 0.05)
        if facing_away:
            glass = ((Y > h * 0.62) & (Y < h * 0.9) & (X < hw - 0.2)) if kind == BUS else np.zeros_like(body)
        else:
            glass = (Y > h * 0.5) & (Y < h * 0.88) & (X < hw - 0.12)
        lamp = (Y > 0.55) & (Y < 0.8) & (X > hw - 0.35) & (X < hw - 0.05)
        mask = body | wheel
        det = np.select([wheel, glass, lamp], [D_TYRE, D_GLASS, lights])
    cv.paint(where, mask, z, kind, inst, det, xw[None, :] - x, Y)
    # contact shadow on the road
    shadow = cv.billboard(z, x - hw - 0.2, x + hw + 0.2, -0.35, 0.0)
    if shadow is not None:
        swhere = shadow[0]
        code = cv.code[swhere]
        dark = (cv.label[swhere] == ROAD) & (cv.depth[swhere] > z)
        np.copyto(code, (code & ~np.int32(0x78)) | (D_DARK << 3), where=dark)


def _person(cv: _Canvas, x: float, z: float, cls: int = PERSON, base: float = 0.0, riding: bool = False) -> None:
    """A pedestrian (or a rider's body when ``riding``): head, torso, arms, legs; ``base`` lifts it off the ground."""
    rng = cv.rng
    inst = cv.new_instance(cls)
    h = rng.uniform(1.55, 1.9)
    stride = rng.uniform(0.0, 0.12) * h
    if cv.f * h / z < _LOD_PIXELS:
        cv.rect(z, x - 0.2, x + 0.2, base, base + h, cls, inst)
        return
    box = cv.billboard(z, x - 0.4, x + 0.4, base, base + h)
    if box is None:
        return
    where, xw, yw = box
    X = (xw - x)[None, :]
    Y = (yw - base)[:, None] * (1.0 / h)  # 0 at the feet, 1 at the top of the head
    ax = np.abs(X)
    u = h / 1.75
    head = X**2 + ((Y - 0.93) * h) ** 2 < (0.11 * u) ** 2
    torso = (ax < 0.19 * u + 0.03 * (Y - 0.5)) & (Y > 0.5) & (Y < 0.86)
    arms = (np.abs(ax - 0.225 * u) < 0.04) & (Y > 0.45) & (Y < 0.84)
    if riding:
        legs = (np.abs(ax - 0.12) < 0.08) & (Y > 0.25) & (Y <= 0.52)
    else:
        legs = (np.abs(ax - 0.09 - stride * np.clip(0.5 - Y, 0, 1)) < 0.075) & (Y <= 0.52)
    mask = head | torso | arms | legs
    det = np.select([head & (Y < 0.95), head, legs], [D_SKIN, D_DARK, D_PANTS], D_NONE)
    cv.paint(where, mask, z, cls, inst, det, X, Y * h)


def _two_wheeler(cv: _Canvas, x: float, z: float, motor: bool) -> None:
    """A bicycle or motorcycle seen from behind, with its rider."""
    cls = MOTORCYCLE if motor else BICYCLE
    inst = cv.new_instance(cls)
    box = cv.billboard(z + 0.05, x - 0.45, x + 0.45, 0.0, 1.25)
    if box is not None:
        where, xw, yw = box
        X = np.abs(xw - x)[None, :]
        Y = yw[:, None]
        bar = np.abs(Y - 1.0)
        if motor:
            mask = ((X < 0.09) & (Y < 0.65)) | ((X < 0.3) & (Y > 0.4) & (Y < 0.85)) | ((X < 0.42) & (bar < 0.04))
            det = np.where((Y > 0.6) & (Y < 0.7) & (X < 0.08), D_TAIL, np.where(Y < 0.6, D_TYRE, D_NONE))
        else:
            mask = ((X < 0.035) & (Y < 0.68)) | ((X < 0.06) & (Y > 0.6) & (Y < 0.95)) | ((X < 0.3) & (bar < 0.03))
            det = np.where(Y < 0.68, D_TYRE, D_NONE)
        cv.paint(where, mask, z + 0.05, cls, inst, det, xw[None, :] - x, Y)
    _person(cv, x, z, RIDER, base=0.45 if motor else 0.35, riding=True)


def _pole(cv: _Canvas, x: float, z: float, height: float, radius: float = 0.09) -> None:
    cv.rect(z, x - radius, x + radius, 0.0, height, POLE, cv.new_instance(POLE))


def _street_lamp(cv: _Canvas, x: float, z: float, toward: float, lamps: list[tuple[float, float, float]]) -> None:
    """Pole with an arm over the road and a lamp head: a light source at night."""
    h = cv.rng.uniform(6.5, 9.0)
    arm = cv.rng.uniform(1.2, 2.2)
    _pole(cv, x, z, h, 0.11)
    inst = cv.new_instance(POLE)
    x0, x1 = sorted((x, x + toward * arm))
    cv.rect(z, x0, x1, h - 0.12, h, POLE, inst)
    hx = x + toward * arm
    hx0, hx1 = sorted((hx - toward * 0.1, hx + toward * 0.6))
    cv.rect(z - 0.01, hx0, hx1, h - 0.3, h - 0.02, POLE, inst)
    cv.rect(z - 0.02, hx0 + 0.05, hx1 - 0.05, h - 0.32, h - 0.22, POLE, inst, D_LAMP)
    lamps.append((hx, z, h))


def _traffic_light(cv: _Canvas, x: float, z: float, overhead: float | None = None) -> None:
    """A pole with a three-lamp box (one lamp lit); optionally an arm reaching over the road with a second box."""
    rng = cv.rng
    h = rng.uniform(3.0, 4.2)
    state = int(rng.integers(3))
    arm_h = rng.uniform(5.2, 6.2)
    _pole(cv, x, z, h + 0.2, 0.09)
    boxes = [(x, h - 0.5)]
    if overhead is not None:
        _pole(cv, x, z + 0.01, arm_h, 0.12)
        x0, x1 = sorted((x, overhead))
        cv.rect(z + 0.01, x0, x1, arm_h - 0.15, arm_h, POLE, cv.new_instance(POLE))
        boxes.append((overhead, arm_h - 1.2))
    for bx, by in boxes:
        inst = cv.new_instance(LIGHT)
        if cv.f / z < _LOD_PIXELS:  # the box is under ~7 pixels tall: no lamps
            cv.rect(z - 0.03, bx - 0.18, bx + 0.18, by - 0.5, by + 0.5, LIGHT, inst)
            continue
        box = cv.billboard(z - 0.03, bx - 0.18, bx + 0.18, by - 0.5, by + 0.5)
        if box is None:
            continue
        where, xw, yw = box
        X = (xw - bx)[None, :]
        Y = (yw - by)[:, None]
        det = np.full((len(yw), len(xw)), D_NONE, np.uint8)
        for lamp, code in enumerate((D_TL_RED, D_TL_AMBER, D_TL_GREEN)):
            disc = X**2 + (Y - 0.3 + 0.3 * lamp) ** 2 < 0.11**2
            det[disc] = code if lamp == state else D_TL_OFF
        mask = (np.abs(X) <= 0.18) & (np.abs(Y) <= 0.5)
        cv.paint(where, mask, z - 0.03, LIGHT, inst, det, X, Y)


def _sign(cv: _Canvas, x: float, z: float) -> None:
    """A traffic sign on its own post: round, triangular or square plate with a light inner symbol."""
    rng = cv.rng
    h = rng.uniform(2.0, 2.6)
    r = rng.uniform(0.3, 0.42)
    shape = int(rng.integers(3))
    _pole(cv, x, z, h, 0.05)
    cy = h + r * 0.9
    inst = cv.new_instance(SIGN)
    if cv.f * 2 * r / z < _LOD_PIXELS * 0.5:
        cv.rect(z - 0.02, x - r * 0.8, x + r * 0.8, cy - r * 0.8, cy + r * 0.8, SIGN, inst)
        return
    box = cv.billboard(z - 0.02, x - r, x + r, cy - r, cy + r)
    if box is None:
        return
    where, xw, yw = box
    X = (xw - x)[None, :] * (1.0 / r)
    Y = (yw - cy)[:, None] * (1.0 / r)
    if shape == 0:
        rr = X**2 + Y**2
        mask, inner = rr < 1.0, rr < 0.55
    elif shape == 1:
        mask = (Y > -0.8) & (np.abs(X) < (0.9 - Y) * 0.58)
        inner = (Y > -0.55) & (np.abs(X) < (0.55 - Y) * 0.5)
    else:
        mask = (np.abs(X) < 0.85) & (np.abs(Y) < 0.85)
        inner = (np.abs(X) < 0.35) & (np.abs(Y) < 0.5)
    cv.paint(where, mask, z - 0.02, SIGN, inst, np.where(inner, D_SIGN_INNER, D_NONE), X, Y)


def _tree(cv: _Canvas, x: float, z: float) -> None:
    """Trunk and a lumpy crown, both vegetation (as in Cityscapes)."""
    rng = cv.rng
    inst = cv.new_instance(VEGETATION)
    trunk_h = rng.uniform(1.8, 3.2)
    rx = rng.uniform(1.4, 3.2)
    ry = rx * rng.uniform(0.9, 1.5)
    phase = rng.uniform(0, 6.3, 2)
    cv.rect(z + 0.05, x - 0.14, x + 0.14, 0.0, trunk_h + ry * 0.5, VEGETATION, inst, D_DARK)
    cy = trunk_h + ry * 0.8
    box = cv.billboard(z, x - rx * 1.2, x + rx * 1.2, cy - ry * 1.2, cy + ry * 1.2)
    if box is None:
        return
    where, xw, yw = box
    X = (xw - x)[None, :] * (1.0 / rx)
    Y = (yw - cy)[:, None] * (1.0 / ry)
    bumps = 0.12 * np.sin(X * 7.0 + phase[0]) * np.cos(Y * 6.0 + phase[1]) + 0.08 * np.sin((X + Y) * 13.0)
    mask = X**2 + Y**2 < 1.0 + bumps
    cv.paint(where, mask, z, VEGETATION, inst, D_NONE, xw[None, :] - x, yw[:, None])


def _place_objects(
    cv: _Canvas,
    rng: np.random.Generator,
    scene: str,
    xc: float,
    half: float,
    lane_w: float,
    lanes: int,
    edge: list[float],
    walk: list[float],
    grass: list[float],
    parking: list[bool],
    cross: tuple[float, float] | None,
    z_end: float,
    lamps: list[tuple[float, float, float]],
) -> None:
    """Traffic, parked cars, pedestrians, street furniture and trees, all in world coordinates."""
    z_max = min(z_end - 2.0, 110.0)

    def free(z: float) -> bool:  # nothing stands in the middle of the crossing street
        return cross is None or not (cross[0] - 0.5 < z < cross[1] + 0.5)

    sides = (-1.0, 1.0)
    # street furniture along both kerbs
    for s, sign in enumerate(sides):
        kerb = xc + sign * (edge[s] + 0.45)
        z = rng.uniform(4.0, 14.0)
        while z < min(z_max, 90.0):
            if free(z):
                kind = rng.choice(["lamp", "sign", "pole", "light"], p=[0.5, 0.28, 0.1, 0.12])
                if kind == "lamp":
                    _street_lamp(cv, kerb, z, -sign, lamps)
                elif kind == "sign":
                    _sign(cv, kerb + sign * 0.1, z)
                elif kind == "pole":
                    _pole(cv, kerb, z, rng.uniform(3.0, 8.0), rng.uniform(0.06, 0.14))
                else:
                    _traffic_light(cv, kerb, z)
            z += rng.uniform(12.0, 30.0)
        if cross is not None:
            overhead = xc + sign * max(edge[s] - lane_w * 1.5, 0.5) if rng.random() < 0.6 else None
            _traffic_light(cv, kerb, cross[0] - 1.0, overhead)
            if rng.random() < 0.6:
                _traffic_light(cv, kerb, cross[1] + 1.0)
            if rng.random() < 0.5:
                _sign(cv, kerb + sign * 0.2, cross[0] - 3.0)
    # trees on the verges / in sidewalk pits
    for s, sign in enumerate(sides):
        density = {"city": 0.35, "suburb": 0.7, "rural": 0.8}[scene]
        if rng.random() > density:
            continue
        pos = edge[s] + walk[s] + grass[s] * 0.5 if grass[s] > 1.0 else edge[s] + max(walk[s] - 1.0, 0.6)
        z = rng.uniform(3.0, 12.0)
        step = rng.uniform(7.0, 16.0)
        while z < z_max:
            if free(z) and rng.random() < 0.85:
                _tree(cv, xc + sign * (pos + rng.uniform(-0.3, 0.3)), z)
            z += step * rng.uniform(0.8, 1.2)
    # parked cars
    for s, sign in enumerate(sides):
        if not parking[s]:
            continue
        z = rng.uniform(2.0, 8.0)
        while z < min(z_max, 80.0):
            if free(z) and free(z + 5) and rng.random() < 0.85:
                _vehicle(cv, xc + sign * (half + 1.1), z, CAR, rng.random() < 0.5, length=rng.uniform(4.0, 4.8))
            z += rng.uniform(5.5, 8.0)
    # moving traffic, lane by lane
    for lane in range(lanes):
        x_lane = xc - half + (lane + 0.5) * lane_w
        away = lane >= lanes // 2
        count = rng.poisson({"city": 1.8, "suburb": 1.1, "rural": 0.8}[scene])
        zs = np.sort(rng.uniform(7.0 if abs(x_lane) < lane_w / 2 else 3.5, 90.0, count))
        last = -10.0
        for z in zs:
            if z - last < 9.0:
                continue
            last = z
            roll = rng.random()
            kind = CAR if roll < 0.82 else (TRUCK if roll < 0.9 else BUS)
            if roll > 0.97:
                _two_wheeler(cv, x_lane + rng.uniform(-0.5, 0.5), z, motor=True)
                continue
            _vehicle(cv, x_lane + rng.uniform(-0.25, 0.25), z, kind, away)
    # cyclists near the right kerb
    if scene != "rural" and rng.random() < 0.3:
        _two_wheeler(cv, xc + half - 0.8, rng.uniform(6.0, 35.0), motor=False)
    # pedestrians on the sidewalks (a few crossing at the zebra)
    count = rng.poisson({"city": 6.0, "suburb": 2.0, "rural": 0.4}[scene])
    for _ in range(count):
        s = int(rng.integers(2))
        if walk[s] < 0.8:
            continue
        pos = edge[s] + rng.uniform(0.5, walk[s] - 0.2)
        _person(cv, xc + (-1.0 if s == 0 else 1.0) * pos, rng.uniform(3.5, 45.0))
    if cross is not None and rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            _person(cv, xc + rng.uniform(-half, half), cross[0] - rng.uniform(1.5, 4.0))


# --------------------------------------------------------------------------------------------------------------
# Appearance: per-domain colours, textures and effects on top of the shared layout.
# --------------------------------------------------------------------------------------------------------------


def _c(*rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array(rgb, np.float32) / 255.0


# Per class: the colour options an instance picks from (by its layout key, so a red car stays red everywhere).
_FLAT_COLOURS: dict[int, np.ndarray] = {
    ROAD: _c((78, 78, 84)),
    SIDEWALK: _c((168, 160, 150)),
    BUILDING: _c((196, 160, 122), (160, 112, 92), (214, 206, 188), (132, 138, 150), (206, 180, 130)),
    WALL: _c((186, 172, 150), (150, 150, 146)),
    FENCE: _c((130, 104, 80), (118, 124, 130)),
    POLE: _c((112, 114, 120)),
    LIGHT: _c((38, 40, 36)),
    SIGN: _c((214, 40, 32), (30, 80, 190), (240, 200, 30)),
    VEGETATION: _c((62, 128, 44), (78, 140, 50), (50, 110, 40)),
    TERRAIN: _c((128, 142, 70), (140, 130, 80)),
    SKY: _c((110, 170, 240)),
    PERSON: _c((180, 50, 50), (50, 76, 150), (214, 214, 204), (70, 70, 74), (220, 164, 50)),
    RIDER: _c((200, 60, 40), (40, 90, 170), (60, 60, 60)),
    CAR: _c((190, 26, 26), (26, 52, 150), (200, 200, 206), (30, 30, 34), (140, 142, 148), (240, 240, 240)),
    TRUCK: _c((216, 216, 204), (204, 128, 38)),
    BUS: _c((216, 190, 38), (50, 114, 190)),
    TRAIN: _c((150, 150, 150)),
    MOTORCYCLE: _c((38, 38, 38), (160, 30, 30)),
    BICYCLE: _c((50, 50, 56), (150, 26, 26)),
}

# The "real" domains: greyer, less saturated, a different white balance, more variety per class.
_REAL_COLOURS: dict[int, np.ndarray] = {
    ROAD: _c((92, 90, 92), (70, 70, 74), (104, 100, 96)),
    SIDEWALK: _c((140, 134, 128), (120, 118, 116), (150, 140, 126)),
    BUILDING: _c((120, 112, 104), (150, 140, 124), (96, 92, 90), (170, 164, 152), (128, 100, 86), (110, 116, 122)),
    WALL: _c((134, 128, 118), (110, 108, 100)),
    FENCE: _c((104, 96, 86), (86, 90, 92)),
    POLE: _c((100, 100, 96), (76, 80, 82)),
    LIGHT: _c((30, 32, 30)),
    SIGN: _c((176, 50, 46), (40, 76, 150), (200, 180, 60), (210, 210, 210)),
    VEGETATION: _c((66, 84, 40), (54, 74, 36), (86, 98, 52)),
    TERRAIN: _c((112, 114, 76), (124, 118, 88), (96, 104, 66)),
    SKY: _c((176, 192, 206), (150, 178, 204)),
    PERSON: _c((60, 60, 66), (110, 90, 80), (40, 44, 60), (150, 140, 130), (120, 40, 40)),
    RIDER: _c((50, 50, 56), (130, 50, 40), (80, 90, 110)),
    CAR: _c((40, 40, 44), (150, 152, 156), (200, 200, 200), (90, 30, 30), (50, 60, 90), (110, 112, 108)),
    TRUCK: _c((180, 180, 176), (120, 100, 70)),
    BUS: _c((190, 186, 170), (80, 110, 150)),
    TRAIN: _c((120, 124, 128)),
    MOTORCYCLE: _c((36, 36, 40)),
    BICYCLE: _c((40, 40, 44), (90, 30, 30)),
}

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


def _sample(u: np.ndarray, v: np.ndarray, scale: np.ndarray | float, du: float, dv: float) -> np.ndarray:
    """Nearest lookup of the noise tile at texel coordinates ``(u * scale + du, v * scale + dv)``: for
    minification and fine grain, where a texel is at most a few pixels."""
    iu = (u * scale + (du + _OFFSET)).astype(np.int32)
    iv = (v * scale + (dv + _OFFSET)).astype(np.int32)
    iu &= _TILE - 1
    iv &= _TILE - 1
    iv <<= 8
    iv |= iu
    return _texture_tile().take(iv)


def _sample_smooth(u: np.ndarray, v: np.ndarray, scale: np.ndarray | float, du: float, dv: float) -> np.ndarray:
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
def _vignette(height: int, width: int) -> np.ndarray:
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


def _glow(emission: np.ndarray) -> np.ndarray:
    """Wide soft halo around light sources (bloom), computed at quarter resolution."""
    H, W = emission.shape[1:]
    if H % 4 or W % 4:
        return np.zeros_like(emission)
    return _upsample4(_blur_small(_downsample4(emission) * 3.0, 3))


def _albedo(lay: _Layout, palette: dict[int, np.ndarray], jitter: float) -> np.ndarray:
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


def _on_ground(lay: _Layout) -> np.ndarray:
    """Pixels of the ground plane (road, sidewalk, terrain), in sun or in shade."""
    normal = lay.code & 7
    return (normal == N_GROUND) | (normal == N_GROUND_SHADE)


def _light(lay: _Layout, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-pixel sun factor from the surface orientation (and the facades' shade on the ground)."""
    lit = rng.uniform(0.7, 1.0)
    factors = np.ones(8, np.float32)
    factors[N_LEFT] = 1.0 - 0.38 * lit * strength
    factors[N_RIGHT] = 1.0 - 0.38 * (1.0 - lit) * strength
    factors[N_FRONT] = 1.0 - 0.12 * strength
    factors[N_GROUND_SHADE] = 1.0 - 0.4 * strength
    return factors.take(lay.code & 7)


def _paint_sky(
    lay: _Layout,
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
        puff = _sample_smooth(lay.tu[:rows], lay.tv[:rows] * 3.0, 4.0, rng.uniform(0, 256), rng.uniform(0, 256))
        cover = np.clip((puff + 0.05) * 2.0, 0.0, 1.0) * clouds * (1 - t[:, None] * 0.5)
        grad = grad * (1 - cover) + np.float32(0.9) * cover
    np.copyto(img[:, :rows], grad, where=sky)


def _texture_factor(lay: _Layout, rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    """Class-dependent multiplicative texture in surface coordinates, faded where it would alias."""
    freq = _TEX_FREQ.take(lay.label)
    scale = freq * _TEXELS_PER_CELL
    fine = _sample(lay.tu, lay.tv, scale, rng.uniform(0, 256), rng.uniform(0, 256))
    patch = _sample_smooth(lay.tu, lay.tv, scale * 0.2, rng.uniform(0, 256), rng.uniform(0, 256))
    fade = np.clip(1.3 - lay.depth * freq * (0.6 / lay.f), 0.3, 1.0)
    return 1.0 + gain * (fine * _TEX_FINE.take(lay.label) * fade + patch * _TEX_PATCH.take(lay.label))


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float, gamma: float = 1.0) -> np.ndarray:
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


def _real(lay: _Layout, rng: np.random.Generator, sun: float = 0.8) -> np.ndarray:
    """The ``textured`` look every adverse domain starts from (realistic colours, textures, clouds)."""
    img = _albedo(lay, _REAL_COLOURS, 0.2)
    img *= _light(lay, rng, sun) * _texture_factor(lay, rng)
    _paint_sky(lay, img, _c((120, 152, 192))[0], _c((200, 208, 216))[0], clouds=0.8, rng=rng)
    return img


def _render_synthetic(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    img = _albedo(lay, _FLAT_COLOURS, 0.08)
    img *= _light(lay, rng, 1.0)
    _paint_sky(lay, img, _c((70, 130, 230))[0], _c((170, 205, 245))[0])
    return _finish(img, rng, 0.0)


def _render_textured(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng)
    img *= _vignette(*lay.label.shape)
    return _finish(img, rng, 0.015, gamma=1.1)


def _render_fog(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.2)
    t = np.exp(lay.depth * np.float32(-1.0 / rng.uniform(25.0, 60.0)))
    haze = np.array([0.78, 0.8, 0.82], np.float32) * rng.uniform(0.92, 1.05)
    img *= t * 0.85
    img += (haze[:, None, None] * (1 - t)) + 0.06 * t
    return _finish(img, rng, 0.012)


def _render_night(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    albedo = _real(lay, rng, sun=0.0)
    H, W = lay.label.shape
    # ambient moonlight plus pools of warm lamp light on the ground
    pool = np.zeros((H, W), np.float32)
    ground = _on_ground(lay)
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
    _paint_sky(lay, img, _c((4, 6, 16))[0], _c((18, 22, 40))[0])
    # light sources and their glow
    detail = (lay.code >> 3) & (N_DETAILS - 1)
    emissive = _EMITS.take(detail)
    if emissive.any():
        emission = np.take(np.ascontiguousarray(_EMISSION.T), detail, axis=1)
        np.copyto(img, emission, where=emissive)
        img += _glow(np.take(np.ascontiguousarray(_GLOW.T), detail, axis=1))
    img *= 1.3
    return _finish(img, rng, 0.035, gamma=1.15)


def _wet_reflections(lay: _Layout, img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Mirror what stands on the ground into road/sidewalk pixels (per column, about each object's foot line)."""
    H, W = lay.label.shape
    on_ground = _on_ground(lay)
    wet = on_ground & (lay.label <= SIDEWALK)
    rows = np.arange(H, dtype=np.int32)[:, None]
    foot = np.maximum.accumulate(np.where(on_ground, -1, rows), axis=0)  # nearest non-ground row above
    ripple = _sample(lay.tu, lay.tv, 2.0, rng.uniform(0, 256), rng.uniform(0, 256))
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


def _render_rain(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.15)
    grey = img.mean(axis=0)
    img = img * 0.31 + grey * 0.31
    _paint_sky(lay, img, _c((92, 96, 102))[0], _c((138, 142, 146))[0], clouds=0.4, rng=rng)
    img = _wet_reflections(lay, img, rng, 0.55)
    t = np.exp(lay.depth * np.float32(-1.0 / rng.uniform(60.0, 120.0)))
    img *= t
    img += 0.45 * (1 - t)
    H, W = lay.label.shape
    img += _streaks((H, W), rng, int(H * W * 0.0035), max(H // 14, 3), rng.uniform(-0.35, 0.35)) * 0.2
    return _finish(img, rng, 0.02)


def _render_snow(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    img = _real(lay, rng, sun=0.3)
    H, W = lay.label.shape
    label = lay.label
    ground = _on_ground(lay)
    lumps = _sample_smooth(lay.tu, lay.tv, 1.2, rng.uniform(0, 256), rng.uniform(0, 256))
    grain = _sample(lay.tu, lay.tv, 12.0, rng.uniform(0, 256), rng.uniform(0, 256))
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
    _paint_sky(lay, img, _c((196, 202, 210))[0], _c((226, 230, 234))[0])
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
    return _finish(img, rng, 0.015)


_RENDERERS = {
    "synthetic": _render_synthetic,
    "textured": _render_textured,
    "fog": _render_fog,
    "night": _render_night,
    "rain": _render_rain,
    "snow": _render_snow,
}


def _check_domain(domain: str) -> None:
    if domain not in _RENDERERS:
        raise UserError(
            f"unknown synthetic domain '{domain}';{did_you_mean(domain, SYNTHETIC_DOMAINS)} "
            f"domains: {', '.join(SYNTHETIC_DOMAINS)}"
        )


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def render_scene(seed: int, index: int, size: tuple[int, int] | int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``index`` of ``seed`` in ``domain``: ``(image uint8 [H, W, 3], label uint8 [H, W])``.

    The label map depends only on ``(seed, index, size)``, so every domain of one scene shares it exactly; the
    random stream does not depend on ``size`` either, so other sizes show the same scene. Every pixel has a class
    (no ignore pixels). The image is a transposed view of a channels-first buffer (``image.transpose(2, 0, 1)``
    is contiguous and free); call ``np.ascontiguousarray`` if you need an HWC-contiguous array.
    """
    _check_domain(domain)
    H, W = _size(size)
    lay = _layout(seed, index, (H, W))
    rng = np.random.default_rng([seed, index, 1 + SYNTHETIC_DOMAINS.index(domain)])
    return _RENDERERS[domain](lay, rng), lay.label


def render_domains(
    seed: int, index: int, size: tuple[int, int] | int, domains: tuple[str, ...] | list[str] = SYNTHETIC_DOMAINS
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Render one layout in several domains at once (the layout is computed once): ``({domain: image}, label)``."""
    for domain in domains:
        _check_domain(domain)
    H, W = _size(size)
    lay = _layout(seed, index, (H, W))
    images = {}
    for domain in domains:
        rng = np.random.default_rng([seed, index, 1 + SYNTHETIC_DOMAINS.index(domain)])
        images[domain] = _RENDERERS[domain](lay, rng)
    return images, lay.label


def colorize(label: np.ndarray, palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE) -> np.ndarray:
    """Label map -> uint8 RGB with the Cityscapes colours (ignored pixels black), for looking at layouts."""
    return colorize_with(label, palette)


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


class SyntheticSplit(Dataset):
    """One split of one domain: ``length`` scenes starting at layout index ``offset``.

    With ``flip=True`` (the train split), an item is mirrored left-right when a coin seeded by
    ``(seed, index, epoch)`` says so; call :meth:`set_epoch` before each epoch's iterator is created (workers copy
    the dataset) so each epoch sees a fresh set of flips. Without it every epoch uses the flips of epoch 0.
    """

    def __init__(
        self,
        *,
        seed: int,
        offset: int,
        length: int,
        size: tuple[int, int],
        domain: str,
        flip: bool = False,
    ) -> None:
        _check_domain(domain)
        self.seed, self.offset, self.length = seed, offset, length
        self.size, self.domain, self.flip = size, domain, flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def layout_index(self, i: int) -> int:
        """The generator index behind item ``i`` (what ``render_scene`` takes)."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length} scenes")
        return self.offset + i

    def __getitem__(self, i: int) -> DenseSample:
        index = self.layout_index(int(i))
        image, label = render_scene(self.seed, index, self.size, self.domain)
        if self.flip and np.random.default_rng([self.seed, index, self.epoch, 7]).random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "domain": self.domain,
            "index": index,
        }


class SyntheticScenes(DenseDataSource):
    """The ``synthetic`` data source: Cityscapes' 19 classes, six appearance domains, procedural layouts."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()
        self.domains = tuple(self.options.domains)
        self.train_domains = tuple(self.options.train_domains)
        self.size = self.options.image_size

    def split(self, split: str, domain: str) -> SyntheticSplit:
        """Train scenes are indices ``0..num_train-1``; val scenes start at ``VAL_INDEX_OFFSET`` (disjoint)."""
        self.check_split(split, domain)
        if split == "train":
            return SyntheticSplit(seed=self.options.seed, offset=0, length=self.options.num_train, size=self.size,
                                  domain=domain, flip=True)  # fmt: skip
        return SyntheticSplit(seed=self.options.seed, offset=VAL_INDEX_OFFSET, length=self.options.num_val,
                              size=self.size, domain=domain)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(size={self.size}, domains={self.domains}, train_domains={self.train_domains}, "
            f"num_train={self.options.num_train}, num_val={self.options.num_val}, seed={self.options.seed})"
        )


def build_synthetic(options: SyntheticOptions, context: Any = None) -> SyntheticScenes:
    """Factory registered as dataset ``synthetic``; extra context (num_classes, ...) is not needed and ignored."""
    return SyntheticScenes(options)


__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "SYNTHETIC_DOMAINS",
    "VAL_INDEX_OFFSET",
    "SyntheticScenes",
    "SyntheticSplit",
    "build_synthetic",
    "colorize",
    "render_domains",
    "render_scene",
]
