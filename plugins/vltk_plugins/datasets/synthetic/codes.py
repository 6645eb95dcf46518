"""The vocabulary the layout and the painters share: class ids, surface details, orientations, sky depth.

A layout stores one int32 ``code`` per pixel, ``(instance << 7) | (detail << 3) | orientation``: the instance
(which object, so each keeps its colour), the detail (a window, a tyre: appearance modifiers that keep the class
label, a car window is still "car") and the orientation (which way the surface faces, for sun shading). These
numbers are that packing's alphabet; the class ids are Cityscapes' train ids, the order of
:data:`vltk.api.CITYSCAPES_CLASSES`.
"""

from __future__ import annotations

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
