"""Key maps: how a released checkpoint's tensor names become a vltk model's, written as data.

A map is a list of rules tried in order on every key of the released file. :class:`Rename` moves one tensor
(``re.fullmatch`` on the released key, ``re.sub``-style template for the vltk key); :class:`Concat` joins tensors
the release stores apart into the one vltk keeps (Hugging Face's ``q_proj``/``k_proj``/``v_proj`` into
``nn.MultiheadAttention``'s ``in_proj_weight``); :class:`Drop` leaves a tensor out and says why (Rein's
``query_embed``, which its link replaces; a loss buffer). A key no rule matches is an error: a map is complete or
the file is not what it claims to be, so nothing is loaded by accident. :func:`apply_keymap` returns the mapped
state together with the record of what became what, which the error messages use to name the released keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from vltk.api import UserError


@dataclass(frozen=True)
class Rename:
    """``pattern`` (a regular expression matched against the whole released key) -> ``target`` (its template).

    Two reshapes a vltk module may need, each named where it is used: ``pad_rows`` zero-pads dim 0 to that many
    rows (DenseCLIP's 13-position text encoder into CLIP's 77-position tower, whose extra rows vltk reads only for
    prompts longer than the release allows); ``grid`` resamples a ``[1 + g*g, C]`` position embedding (class row
    first) to ``grid x grid`` bicubically (DenseCLIP's attention pool trained at 512 px into the 224-px pool
    vltk builds, which interpolates to the feature size at run time anyway); ``rows`` reorders dim 0 (vltk row
    ``i`` is released row ``rows[i]``: detectron2's anchors per location are size-major, torchvision's
    ratio-major); ``prepend_rows`` puts that many zero rows first (torchvision's background slot of class-specific
    box deltas, which detectron2 does not have and no prediction reads).
    """

    pattern: str
    target: str
    pad_rows: int | None = None
    grid: int | None = None
    rows: tuple[int, ...] | None = None
    prepend_rows: int = 0


@dataclass(frozen=True)
class Concat:
    """Released tensors joined along ``dim`` into one vltk tensor.

    ``pattern`` has a named group ``part`` whose values ``parts`` lists in concatenation order; every other group
    is shared by the pieces of one target. Every piece must be present, or the file is refused.
    """

    pattern: str
    target: str
    parts: tuple[str, ...]
    dim: int = 0


@dataclass(frozen=True)
class Drop:
    """Released tensors vltk does not keep, with the reason the report prints."""

    pattern: str
    reason: str


Rule = Rename | Concat | Drop


@dataclass
class MappedState:
    """The result of :func:`apply_keymap`: the vltk state, ``renamed`` (vltk key -> released key, a ``+``-joined
    list for concatenations) and ``dropped`` (released key -> reason)."""

    state: dict[str, Tensor] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


def _expand(match: re.Match[str], template: str) -> str:
    return match.expand(template)


def _reshaped(value: Tensor, rule: Rename, key: str, title: str) -> Tensor:
    import torch
    import torch.nn.functional as F

    if rule.pad_rows is not None and value.shape[0] != rule.pad_rows:
        if value.shape[0] > rule.pad_rows:
            raise UserError(f"{title}: {key} has {value.shape[0]} rows, more than the {rule.pad_rows} vltk keeps")
        value = torch.cat([value, value.new_zeros((rule.pad_rows - value.shape[0], *value.shape[1:]))])
    if rule.grid is not None and value.shape[0] != rule.grid**2 + 1:
        side = math.isqrt(value.shape[0] - 1)
        if side * side != value.shape[0] - 1:
            raise UserError(f"{title}: {key} {list(value.shape)} is no class row + square grid of positions")
        grid = value[1:].T.reshape(1, -1, side, side).float()
        grid = F.interpolate(grid, size=(rule.grid, rule.grid), mode="bicubic", align_corners=False)
        value = torch.cat([value[:1], grid.reshape(value.shape[1], -1).T.to(value.dtype)])
    if rule.rows is not None:
        if len(rule.rows) != value.shape[0]:
            raise UserError(
                f"{title}: {key} has {value.shape[0]} rows where {len(rule.rows)} are expected (anchors per location "
                "x outputs); give the anchors it was trained with (decoder.anchor_sizes=[...] "
                "decoder.aspect_ratios=[...])"
            )
        value = value[list(rule.rows)]
    if rule.prepend_rows:
        value = torch.cat([value.new_zeros((rule.prepend_rows, *value.shape[1:])), value])
    return value


def apply_keymap(state: dict[str, Tensor], rules: Sequence[Rule], *, title: str) -> MappedState:
    """Map every tensor of ``state`` through the first rule that matches its key.

    Keys no rule matches, two keys landing on one vltk key and incomplete concatenations are each one
    :class:`UserError` naming the first keys and ``title`` (the format), so a file of another layout is refused.
    """
    compiled = [(rule, re.compile(rule.pattern)) for rule in rules]
    mapped = MappedState()
    pieces: dict[str, dict[str, tuple[str, Tensor]]] = {}
    concat_rules: dict[str, Concat] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        for rule, pattern in compiled:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            if isinstance(rule, Drop):
                mapped.dropped[key] = rule.reason
            elif isinstance(rule, Rename):
                target = _expand(match, rule.target)
                if target in mapped.state:
                    raise UserError(
                        f"{title}: '{mapped.renamed[target]}' and '{key}' both map to '{target}'; the file holds the "
                        "same tensor twice, which no release of this format does"
                    )
                mapped.state[target] = _reshaped(value, rule, key, title)
                mapped.renamed[target] = key
            else:
                target = _expand(match, rule.target)
                pieces.setdefault(target, {})[match.group("part")] = (key, value)
                concat_rules[target] = rule
            break
        else:
            unmatched.append(key)
    if unmatched:
        more = f" (and {len(unmatched) - 4} more)" if len(unmatched) > 4 else ""
        raise UserError(
            f"{title}: {len(unmatched)} keys of the file are not in its key map: {', '.join(unmatched[:4])}{more}; "
            "the file is not of this format (or of a variant vltk does not read)"
        )
    for target, found in pieces.items():
        rule = concat_rules[target]
        missing = [part for part in rule.parts if part not in found]
        if missing:
            present = ", ".join(key for key, _ in found.values())
            raise UserError(f"{title}: {present} come without their {'/'.join(missing)} part(s); the file is damaged")
        ordered = [found[part] for part in rule.parts]
        shapes = {tuple(value.shape[: rule.dim]) + tuple(value.shape[rule.dim + 1 :]) for _, value in ordered}
        if len(shapes) != 1:
            listed = ", ".join(f"{key} {list(value.shape)}" for key, value in ordered)
            raise UserError(f"{title}: cannot join {listed} into {target}: the shapes differ beyond dim {rule.dim}")
        import torch

        mapped.state[target] = torch.cat([value for _, value in ordered], dim=rule.dim)
        mapped.renamed[target] = "+".join(key for key, _ in ordered)
    return mapped


__all__ = ["Concat", "Drop", "MappedState", "Rename", "Rule", "apply_keymap"]
