"""Loading local weights into the backbones: reading files, converting patch size and grid, user-facing checks.

Every backbone takes ``pretrained=<local file>`` or ``pretrained=null`` (nothing is ever downloaded) and must turn
the usual mistakes (a missing file, a TorchScript archive, another model's checkpoint, a wrong variant) into one
:class:`~vltk.api.UserError` naming the file, the key and what to change. Rein also runs patch-14 checkpoints at
patch 16, which needs the patch kernel and the position grid converted on load. Those steps are shared by the
open_clip backbones (``eva02``, ``clip-vit``, ``clip-resnet``) and ``dinov2``, so they live here:

* :func:`read_state_dict`: a state dict of tensors from a local ``.pt``/``.pth``/``.safetensors`` file;
* :func:`resample_spatial`: a checkpoint's patch kernel (timm's FlexiViT pseudo-inverse resize) and absolute
  position grid (timm's antialiased bicubic resize) converted to the model's shapes;
* :func:`check_fit`: what still does not fit after conversion, as a user error; the missing keys otherwise;
* :func:`load_pretrained`: all of the above for an open_clip model (either text layout, vision-only files);
* :func:`warn_random` and :func:`load_pretrained_or_warn`: the one warning for random weights, or the load.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vltk.api import UserError

logger = logging.getLogger(__name__)


def read_state_dict(path: str, label: str, what: str = "open_clip checkpoint") -> dict[str, Tensor]:
    """A state dict of tensors from a local file: raw, under 'state_dict'/'model', ``module.``-prefixed, or
    .safetensors; anything unreadable is a :class:`UserError` saying what to pass instead.

    ``label`` names the component in errors, ``what`` the kind of checkpoint it expects ("DINOv2 checkpoint").
    """
    file = Path(path).expanduser()
    how = (
        f"pass pretrained=<path to a local {what}> (a torch.save'd state dict, raw or under "
        "'state_dict'/'model', or .safetensors), or pretrained=null for random weights"
    )
    if not file.is_file():
        raise UserError(f"{label}: pretrained file '{path}' does not exist; {how}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(file), device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the same user problem
        raise UserError(
            f"{label}: could not read '{path}' as a state dict ({type(error).__name__}: {error}); {how} "
            "(TorchScript archives such as OpenAI's ViT-*.pt must be converted with open_clip first)"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"{label}: '{path}' does not hold a state dict of tensors; {how}")
    state = dict(loaded)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def resample_spatial(
    state: dict[str, Tensor],
    target: Mapping[str, Tensor],
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
    label: str,
    num_prefix_tokens: int = 1,
) -> None:
    """Convert ``state``'s patch kernel and position grid in place to the shapes of ``target`` (timm's helpers).

    * ``state[patch_key]`` (``[C, 3, k, k]``) of another kernel size: FlexiViT's PI-resize
      (``timm.layers.resample_patch_embed``: the pseudo-inverse of the antialiased bicubic resize matrix, so a
      patch resized bicubically and embedded with the new kernel gives the old embedding as closely as possible);
    * ``state[pos_key]`` (``[1, P + s*s, C]`` or ``[P + s*s, C]``) of another grid: the ``s x s`` part resized to
      ``grid`` by ``timm.layers.resample_abs_pos_embed`` (bicubic, antialiased), the
      ``num_prefix_tokens`` rows ``P`` (the cls entry) kept as they are.

    An entry of the same shape is left alone; anything else that differs (channels, a non-square grid) is left
    for :func:`check_fit` to report. ``label`` prefixes the log line of each conversion.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    kernel, wanted = state.get(patch_key), target.get(patch_key)
    if kernel is not None and wanted is not None and kernel.shape != wanted.shape:
        if kernel.ndim == 4 and kernel.shape[:2] == wanted.shape[:2]:
            state[patch_key] = resample_patch_embed(kernel.float(), list(wanted.shape[-2:])).to(kernel.dtype)
            logger.info("%s: resampled %s %s -> %s", label, patch_key, tuple(kernel.shape), tuple(wanted.shape))
    positions, wanted = state.get(pos_key), target.get(pos_key)
    if positions is not None and wanted is not None and positions.shape != wanted.shape:
        cells = positions.shape[-2] - num_prefix_tokens
        side = math.isqrt(max(cells, 0))
        if positions.shape[-1] == wanted.shape[-1] and cells > 0 and side * side == cells:
            batched = positions if positions.ndim == 3 else positions.unsqueeze(0)
            resampled = resample_abs_pos_embed(
                batched.float(), new_size=list(grid), old_size=[side, side], num_prefix_tokens=num_prefix_tokens
            )
            state[pos_key] = (resampled if positions.ndim == 3 else resampled.squeeze(0)).to(positions.dtype)
            logger.info("%s: resampled %s %s -> %s", label, pos_key, tuple(positions.shape), tuple(wanted.shape))


def load_pretrained(
    clip: nn.Module,
    path: str,
    *,
    vision_prefix: str,
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
    label: str,
) -> None:
    """Load a local open_clip checkpoint into ``clip`` with errors a user can act on.

    Accepts open_clip state dicts in either text layout (``CLIP`` or ``CustomTextCLIP``), ``module.``-prefixed
    ones, and vision-only ones (keys under ``visual.`` or bare image-tower keys, prefixed with ``vision_prefix``);
    a missing text tower only warns. Patch-size/grid differences are resampled; any other shape difference, a
    missing image-tower key or an unknown key raises :class:`UserError` naming the key.
    """
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_to_custom_text_state_dict(read_state_dict(path, label))
    target = clip.state_dict()
    if not any(key.startswith(("visual.", "text.")) for key in state):
        state = {vision_prefix + key: value for key, value in state.items()}
    for name in ("logit_scale", "logit_bias"):
        if name in state and name in target and state[name].ndim != target[name].ndim:
            state[name] = state[name].reshape(target[name].shape)
    resample_spatial(state, target, patch_key, pos_key, grid, label)
    missing = check_fit(state, target, path=path, label=label)
    missing_vision = [key for key in missing if key.startswith("visual.")]
    if missing_vision:
        raise UserError(
            f"{label}: '{path}' lacks {len(missing_vision)} image-tower keys (first: {missing_vision[:3]}); check "
            "variant/model"
        )
    missing_text = [key for key in missing if key.startswith("text.")]
    all_text = [key for key in target if key.startswith("text.")]
    if missing_text and len(missing_text) != len(all_text):
        raise UserError(f"{label}: '{path}' has an incomplete text tower (missing {missing_text[:3]})")
    if missing_text:
        warnings.warn(f"{label}: '{path}' has no text tower; the text tower keeps random weights", stacklevel=3)
    clip.load_state_dict(state, strict=False)


def check_fit(state: Mapping[str, Tensor], target: Mapping[str, Tensor], *, path: str, label: str) -> list[str]:
    """Raise :class:`UserError` for a key of another shape or a key the model lacks; return the missing keys.

    Run after :func:`resample_spatial`, so a shape difference left here is one no conversion can fix.
    """
    for key, wanted in target.items():
        if key in state and state[key].shape != wanted.shape:
            raise UserError(
                f"{label}: '{path}' does not fit this model: '{key}' has shape {tuple(state[key].shape)} in the "
                f"file but {tuple(wanted.shape)} in the model; check variant/model/patch_size"
            )
    unexpected = [key for key in state if key not in target]
    if unexpected:
        raise UserError(
            f"{label}: '{path}' has {len(unexpected)} keys this model lacks (first: {unexpected[:3]}); is it a "
            "checkpoint of another model? check variant/model"
        )
    return [key for key in target if key not in state]


def warn_random(label: str, what: str = "open_clip checkpoint") -> None:
    """The one-line warning every backbone gives when it is built without weights (``pretrained=None``).

    ``what`` is the kind of file that would give it meaningful features ("DINOv2 checkpoint").
    """
    warnings.warn(
        f"{label}: pretrained=None, so the backbone has random weights; pass pretrained=<local {what}> for "
        "meaningful features",
        stacklevel=3,
    )


def load_pretrained_or_warn(
    clip: nn.Module,
    pretrained: str | None,
    *,
    label: str,
    vision_prefix: str,
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
) -> None:
    """What an open_clip backbone's factory does with ``pretrained``: :func:`load_pretrained` from that local file,
    or, for ``None``, keep the random weights and say so once (:func:`warn_random`).

    The keywords are :func:`load_pretrained`'s: where the image tower's keys, patch kernel and position grid are.
    """
    if pretrained is None:
        warn_random(label)
    else:
        load_pretrained(
            clip,
            pretrained,
            vision_prefix=vision_prefix,
            patch_key=patch_key,
            pos_key=pos_key,
            grid=grid,
            label=label,
        )


__all__ = [
    "check_fit",
    "load_pretrained",
    "load_pretrained_or_warn",
    "read_state_dict",
    "resample_spatial",
    "warn_random",
]
