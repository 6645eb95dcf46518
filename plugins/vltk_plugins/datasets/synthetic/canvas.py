"""The z-buffered pinhole camera every layout is drawn through: ground, facades, billboards in world metres.

The layout (:mod:`.layout`) and the objects (:mod:`.objects`) describe the street in world coordinates; the
canvas projects them, keeps the nearest surface per pixel and records what appearance needs (class, packed code,
depth, texture coordinates). Drawing in metres rather than pixels is what makes the same scene come out at any
image size.
"""

from __future__ import annotations

import math

import numpy as np

from vltk_plugins.datasets.synthetic.codes import D_NONE, N_FRONT, N_SKY, SKY, SKY_DEPTH


class Canvas:
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


__all__ = ["Canvas"]
