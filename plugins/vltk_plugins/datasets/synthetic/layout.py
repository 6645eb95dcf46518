"""Scene layout: the street geometry and labels of scene ``(seed, index)``, shared by every domain.

:func:`scene_layout` draws everything from ``numpy.random.default_rng([seed, index])`` and nothing else, so
the label map, depth, instance ids and texture coordinates of a scene are the same in all six domains (only the
painters in :mod:`.domains` see the domain). A scene is a pinhole-camera view of a street: a ground plane with
road, sidewalks and terrain (markings, a crossing street), facade lines on planes parallel to the road (front line
over back line, windows on buildings), a skyline at the end of the street, then the objects of :mod:`.objects`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vltk_plugins.datasets.synthetic.canvas import Canvas
from vltk_plugins.datasets.synthetic.codes import (
    BUILDING,
    D_GLASS,
    D_GLASS_LIT,
    D_MARK,
    D_NONE,
    FENCE,
    N_GROUND,
    N_GROUND_SHADE,
    N_LEFT,
    N_RIGHT,
    NONE,
    ROAD,
    SIDEWALK,
    SKY_DEPTH,
    TERRAIN,
    VEGETATION,
    WALL,
)
from vltk_plugins.datasets.synthetic.objects import place_objects


@dataclass
class Layout:
    """What appearance needs: per-pixel class, packed instance/detail/orientation code, depth, texture coords.

    Made by :func:`scene_layout`; painters and ``synthetic-det`` read it and never change it (every domain of a
    scene paints the same objects).

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

    @property
    def instance_map(self) -> np.ndarray:
        """Instance id per pixel ``[H, W]`` (index into ``inst_class``; 0 is the sky): what ``synthetic-det`` boxes."""
        return self.code >> 7


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


def scene_layout(seed: int, index: int, size: tuple[int, int]) -> Layout:
    """Draw the scene geometry and labels for ``(seed, index)``: independent of the domain by construction."""
    rng = np.random.default_rng([seed, index])
    H, W = size
    fov = math.radians(rng.uniform(50.0, 72.0))
    f = W / (2.0 * math.tan(fov / 2.0))
    hc = rng.uniform(1.3, 1.8)
    yh = H * rng.uniform(0.4, 0.52)
    xv = W * (0.5 + rng.uniform(-0.07, 0.07))
    cv = Canvas(H, W, f, xv, yh, hc, rng)
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
    place_objects(cv, rng, scene, xc, half, lane_w, lanes, edge, walk, grass, parking,
                   (z_cross0, z_cross1) if has_cross else None, z_end, lamps)  # fmt: skip

    keys = rng.random((len(cv.inst_class), 2), dtype=np.float32)
    return Layout(
        label=cv.label, code=cv.code, depth=cv.depth, tu=cv.tu, tv=cv.tv, inst_class=np.array(cv.inst_class),
        inst_key=keys, f=f, xv=xv, yh=yh, hc=hc, road=(xc, half, lane_w), lamps=lamps,
    )  # fmt: skip


def _facade_line(
    cv: Canvas,
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


__all__ = ["Layout", "scene_layout"]
