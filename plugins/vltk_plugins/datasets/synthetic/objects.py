"""The things standing in a street: vehicles, people, two-wheelers, poles, lamps, traffic lights, signs, trees.

Each object is drawn as billboards (and side faces for vehicles) through the canvas' z-buffer, so nearer things
occlude farther ones and every visible pixel belongs to one instance (what ``synthetic-det`` boxes). Every random
parameter is drawn before any visibility test, so the random stream (hence the scene) does not depend on the
image size; objects only a few pixels tall are drawn as plain boxes (level of detail). :func:`place_objects`
scatters them over a street cross-section the layout chose.
"""

from __future__ import annotations

import numpy as np

from vltk_plugins.datasets.synthetic.canvas import Canvas
from vltk_plugins.datasets.synthetic.codes import (
    BICYCLE,
    BUS,
    CAR,
    D_DARK,
    D_GLASS,
    D_HEAD,
    D_LAMP,
    D_NONE,
    D_PANTS,
    D_SIGN_INNER,
    D_SKIN,
    D_TAIL,
    D_TL_AMBER,
    D_TL_GREEN,
    D_TL_OFF,
    D_TL_RED,
    D_TYRE,
    LIGHT,
    MOTORCYCLE,
    N_LEFT,
    N_RIGHT,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIGN,
    TRUCK,
    VEGETATION,
)

_LOD_PIXELS = 7.0  # below this projected height, shapes are boxes: details would be sub-pixel anyway


def _vehicle(cv: Canvas, x: float, z: float, kind: int, facing_away: bool, length: float | None = None) -> None:
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


def _person(cv: Canvas, x: float, z: float, cls: int = PERSON, base: float = 0.0, riding: bool = False) -> None:
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


def _two_wheeler(cv: Canvas, x: float, z: float, motor: bool) -> None:
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


def _pole(cv: Canvas, x: float, z: float, height: float, radius: float = 0.09) -> None:
    cv.rect(z, x - radius, x + radius, 0.0, height, POLE, cv.new_instance(POLE))


def _street_lamp(cv: Canvas, x: float, z: float, toward: float, lamps: list[tuple[float, float, float]]) -> None:
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


def _traffic_light(cv: Canvas, x: float, z: float, overhead: float | None = None) -> None:
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


def _sign(cv: Canvas, x: float, z: float) -> None:
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


def _tree(cv: Canvas, x: float, z: float) -> None:
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


def place_objects(
    cv: Canvas,
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


__all__ = ["place_objects"]
