"""Overlay PNGs a person can read on their own: a title, a caption over every panel, and a legend saying which
colour is which class (only the classes that appear), for label maps and for boxes alike.

Drawn with PIL (no figure machinery), because an evaluation writes several of them per domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_HEIGHT = 18
SWATCH = 12
PADDING = 4
#: panels lower than this are scaled up (by a whole factor) before the captions are drawn
MIN_PANEL_HEIGHT = 160


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap default font without sizes
        return ImageFont.load_default()


def _text_width(draw: Any, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def legend_entries(
    maps: Sequence[np.ndarray], class_names: Sequence[str], palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, colour)`` of every class id present in ``maps`` (label maps or arrays of box labels), in id
    order; ``ignore`` (drawn black) when ignored pixels appear."""
    present: set[int] = set()
    for values in maps:
        present |= {int(value) for value in np.unique(np.asarray(values))}
    entries = []
    for index in sorted(present):
        if index == ignore_index:
            continue
        name = class_names[index] if 0 <= index < len(class_names) else f"class {index}"
        colour = tuple(int(c) for c in palette[index]) if 0 <= index < len(palette) else (255, 255, 255)
        entries.append((name, colour))
    if ignore_index in present:
        entries.append(("ignore", (0, 0, 0)))
    return entries


def compose(
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    title: str = "",
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
) -> Any:
    """One PIL image: ``title`` on top, the panels side by side each under its caption, the legend below."""
    from PIL import Image, ImageDraw

    font = _font()
    gap = 4
    panels = [(caption, _readable(panel)) for caption, panel in panels]
    height = max(panel.shape[0] for _, panel in panels)
    width = sum(panel.shape[1] for _, panel in panels) + gap * (len(panels) - 1)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    used = PADDING
    for name, colour in legend:  # wrap the legend to the width of the panels
        needed = SWATCH + 4 + _text_width(probe, name, font) + 12
        if rows[-1] and used + needed > max(width, 200):
            rows.append([])
            used = PADDING
        rows[-1].append((name, colour))
        used += needed
    legend_height = (CAPTION_HEIGHT * len(rows) + PADDING) if legend else 0
    top = CAPTION_HEIGHT if title else 0
    canvas = Image.new("RGB", (max(width, 200), top + CAPTION_HEIGHT + height + legend_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PADDING, 2), title, fill=(0, 0, 0), font=font)
    x = 0
    for caption, panel in panels:
        draw.text((x + PADDING, top + 2), caption, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, top + CAPTION_HEIGHT))
        x += panel.shape[1] + gap
    y = top + CAPTION_HEIGHT + height + PADDING
    for row in rows if legend else []:
        x = PADDING
        for name, colour in row:
            draw.rectangle([x, y + 2, x + SWATCH, y + 2 + SWATCH], fill=colour, outline=(0, 0, 0))
            draw.text((x + SWATCH + 4, y + 1), name, fill=(0, 0, 0), font=font)
            x += SWATCH + 4 + _text_width(draw, name, font) + 12
        y += CAPTION_HEIGHT
    return canvas


def _readable(panel: np.ndarray, min_height: int = MIN_PANEL_HEIGHT) -> np.ndarray:
    """Small images (test-size runs) scaled up by a whole factor, nearest neighbour, so captions fit above them."""
    factor = -(-min_height // panel.shape[0])
    return panel if factor <= 1 else panel.repeat(factor, axis=0).repeat(factor, axis=1)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """``image`` with every box outlined in its class colour and captioned with the class name (and score)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    font = _font(10)
    for index, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        label = int(label)
        colour = tuple(int(c) for c in palette[label % len(palette)])
        x0, y0, x1, y1 = (float(value) for value in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
        text = name if scores is None else f"{name} {float(scores[index]):.2f}"
        draw.rectangle([x0, max(0.0, y0 - 12), x0 + _text_width(draw, text, font) + 4, max(12.0, y0)], fill=colour)
        draw.text((x0 + 2, max(0.0, y0 - 12)), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def write_box_overlay(
    path: str | Path,
    image: np.ndarray,
    truth: dict[str, Any] | None,
    prediction: dict[str, Any],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    title: str = "",
) -> Path:
    """Image with the true boxes | image with the predicted boxes (class name and score), a legend of the classes
    that appear; ``truth=None`` (no annotation) leaves the first panel out."""
    panels = []
    shown = [np.asarray(prediction["labels"])]
    if truth is not None:
        panels.append(("ground truth", draw_boxes(image, truth["boxes"], truth["labels"], class_names, palette)))
        shown.append(np.asarray(truth["labels"]))
    boxes = draw_boxes(image, prediction["boxes"], prediction["labels"], class_names, palette, prediction.get("scores"))
    panels.append(("prediction", boxes))
    legend = legend_entries(shown, class_names, palette, ignore_index=-1)
    compose(panels, title=title, legend=legend).save(path)
    return Path(path)


__all__ = ["compose", "draw_boxes", "legend_entries", "write_box_overlay"]
