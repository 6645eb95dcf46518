"""Released paper checkpoints read as vltk checkpoints: the core's side of ``vltk convert`` and ``vltk eval``.

The files a paper's authors publish (Rein's mmseg checkpoint, DenseCLIP's mmseg 0.x one, LSeg's Lightning file, a
Hugging Face Mask2Former) know nothing of vltk. Plugins declare the formats they read through the
``vltk_release_formats`` hook; each format turns such a file into a vltk checkpoint (``model``, ``config``,
``class_names``, ``backbone_included``, ``release``) through an explicit key map. The core only asks the formats
in turn, so ``vltk eval --checkpoint rein_release.pth --backbone-weights dinov2.pth`` works without a converted
copy on disk, and it checks a converted checkpoint against the model its recipe builds (on the meta device, so
checking a ViT-L release costs no memory for weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from vltk.engine.checkpoint import CheckpointError, load_checkpoint
from vltk.errors import UserError


def release_formats() -> dict[str, tuple[str, Any]]:
    """``{format name: (plugin name, format)}`` of every loaded plugin's ``vltk_release_formats``."""
    from vltk.plugins import get_plugin_manager

    return get_plugin_manager().release_formats()


def describe_formats() -> str:
    """``"rein (Rein: mmseg 1.x ...), ..."``: the formats for an error message."""
    formats = release_formats()
    return ", ".join(f"{name} ({getattr(item, 'title', name)})" for name, (_, item) in formats.items()) or "none"


def read_release(path: str | Path, hints: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The vltk checkpoint a released file holds, from the first format that recognises it, else ``None``."""
    for _, release_format in release_formats().values():
        converted = release_format.convert(str(path), dict(hints or {}))
        if converted is not None:
            return converted
    return None


def load_checkpoint_or_release(
    path: str | Path, *, backbone_weights: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """A vltk checkpoint, or a released paper checkpoint converted in memory.

    ``overrides`` reach the format as hints (the attention heads no tensor shape tells). A file that is neither
    is one :class:`UserError` naming both what a vltk checkpoint holds and every release
    format the loaded plugins read.
    """
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        if not Path(path).is_file():
            raise
        converted = read_release(path, {"backbone_weights": backbone_weights, "overrides": list(overrides)})
        if converted is not None:
            return converted
        raise UserError(
            f"'{path}' {error.reason} and not a released checkpoint of a format vltk reads; pass a last.pt or "
            f"best.pt written by `vltk train`, or a release of one of: {describe_formats()}"
        ) from None


def _shape(value: Any) -> str:
    return str(list(value.shape)) if hasattr(value, "shape") else type(value).__name__


def check_checkpoint(checkpoint: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``checkpoint`` with its configuration resolved (``overrides`` applied, every default filled in), after
    checking that its weights fit the model that configuration builds.

    The model is built on the meta device (on the CPU when a component computes while it builds, as a prompter
    encoding its class names does) with the backbone's ``pretrained`` file left unread. A misfit is one
    :class:`UserError` listing the first offending keys with both shapes, named as in the released file when the
    checkpoint carries a ``release`` record of its renames.
    """
    import torch

    from vltk.config import build_config, resolve
    from vltk.engine.checkpoint import state_mismatch
    from vltk.pipeline import build_model
    from vltk.plugins import get_plugin_manager

    registry = get_plugin_manager().get_registry()
    run = resolve(build_config(base=checkpoint["config"], overrides=list(overrides)), registry)
    probe = resolve(build_config(base=run.config.to_dict(), overrides=["backbone.pretrained=null"]), registry)
    class_names = list(checkpoint.get("class_names") or [])
    if not class_names:  # a release that does not record its classes: the dataset's, of the recorded number
        class_names = [f"class_{index}" for index in range(int(checkpoint.get("num_classes", 0)))]
    ignore_index = int(checkpoint.get("ignore_index", 255))
    with warnings.catch_warnings():  # the probe has no backbone weights on purpose: no "random weights" warning
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = build_model(probe, class_names=class_names, ignore_index=ignore_index)
        except (RuntimeError, NotImplementedError):  # a component that computes while it builds (a text prompt)
            model = build_model(probe, class_names=class_names, ignore_index=ignore_index)
    weights = checkpoint["model"]
    own = model.state_dict()
    upstream = (checkpoint.get("release") or {}).get("renamed", {})
    mismatched = [
        f"{upstream.get(key, key)} is {_shape(value)} in the file but {key} is {_shape(own[key])} in the model"
        for key, value in weights.items()
        if key in own and tuple(getattr(value, "shape", ())) != tuple(own[key].shape)
    ]
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise UserError(
            f"the checkpoint's weights do not fit the model its configuration builds: {'; '.join(mismatched[:3])}"
            f"{more}; give the options the file was trained with as KEY=VALUE (vltk show decoder NAME lists them)"
        )
    skip = None if checkpoint.get("backbone_included", True) else "backbone."
    problem = state_mismatch(model, weights, skip_prefix=skip)
    if problem is not None:
        raise UserError(
            f"the checkpoint's weights do not fit the model its configuration builds: {problem}; give the options "
            "the file was trained with as KEY=VALUE"
        )
    return {**checkpoint, "config": run.config.to_dict()}


__all__ = ["check_checkpoint", "describe_formats", "load_checkpoint_or_release", "read_release", "release_formats"]
