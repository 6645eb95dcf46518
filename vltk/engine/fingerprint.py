"""Which backbone a backbone-less checkpoint was trained on, recorded so that it can never be evaluated on another.

A Rein-style checkpoint leaves its frozen backbone out (the adapter and head are a few MB, the backbone GBs) and
gets it back from a weights file at evaluation. Handing it the wrong file (another variant, another release, a
re-converted copy with other patch resampling) does not fail on its own: the shapes fit and the result is a silent
~0 mIoU. So such a checkpoint records the backbone's architecture, the absolute path of the file it was loaded
from, and a fingerprint of the **weights as loaded** (after format conversion and resampling, so the same tensors
from another file layout agree); the model rebuilt for evaluation is checked against it before it is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltk.builtin_weights import is_builtin
from vltk.errors import UserError

#: Key of the backbone record in a checkpoint saved without its backbone.
RECORD_KEY = "backbone_record"


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over every entry of ``module.state_dict()`` (name, dtype, shape and bytes, in key order).

    Hashes the raw bytes without copies (a uint8 view of each contiguous tensor), so a ViT-L takes seconds.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _source(pretrained: str | None) -> str | None:
    """Where the backbone's weights came from, as another folder or machine can find them again: a shipped
    ``builtin:<name>`` as itself (the installed package holds it), a file as its absolute path."""
    if not pretrained:
        return None
    return pretrained if is_builtin(pretrained) else str(Path(pretrained).resolve())


def backbone_record(model: nn.Module, backbone_section: dict[str, Any]) -> dict[str, Any]:
    """What a backbone-less checkpoint stores about the backbone it needs: section, absolute file, fingerprint."""
    pretrained = backbone_section.get("pretrained")
    return {
        "name": backbone_section.get("name"),
        "section": dict(backbone_section),
        "source": _source(pretrained),
        "fingerprint": weights_fingerprint(model.backbone),
    }


def recorded_source(state: dict[str, Any]) -> str | None:
    """The absolute path of the backbone file a backbone-less checkpoint was trained from, if it recorded one."""
    record = state.get(RECORD_KEY) or {}
    return record.get("source")


def check_backbone_fingerprint(model: nn.Module, state: dict[str, Any], *, source: str, weights: str | None) -> None:
    """Refuse a backbone that is not the one ``state`` was trained on (checkpoints that record a fingerprint).

    ``weights`` is the file the rebuilt backbone was loaded from (for the message). Checkpoints that hold their
    backbone, and older ones without a record, pass unchecked.
    """
    record = state.get(RECORD_KEY)
    if state.get("backbone_included", True) or not record:
        return
    found = weights_fingerprint(model.backbone)
    if found == record["fingerprint"]:
        return
    trained_on = record.get("source") or "an unrecorded file"
    given = f"'{weights}'" if weights else "random initialisation (backbone.pretrained=null)"
    raise UserError(
        f"{source} was trained on the {record.get('name')} backbone from '{trained_on}' (weights fingerprint "
        f"{record['fingerprint'][:12]}), but {given} gives other weights (fingerprint {found[:12]}); "
        "pass --backbone-weights with the file it was trained on, converted the same way"
    )


__all__ = ["RECORD_KEY", "backbone_record", "check_backbone_fingerprint", "recorded_source", "weights_fingerprint"]
