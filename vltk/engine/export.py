"""Slim standalone checkpoints and ``torch.export`` programs of trained segmentation models (``vltk export``).

A training checkpoint carries what only training needs (AdamW's two moments, RNG states, the data position, the
loss history) and, for CLIP backbones, a text tower that a model without a prompter never runs: a tiny run's
``last.pt`` is 144 MB of which the model uses 40. An export keeps what inference needs:

* ``model.pt`` — the weights the model **uses** plus the configuration, class names and palette; the backbone is
  always included (standalone: no ``--backbone-weights`` needed), parts no inference pass touches are omitted
  and listed under ``omitted`` so loading knows they are missing on purpose. ``vltk eval``, ``vltk predict`` and
  :func:`vltk.load` read it like any checkpoint.
* ``model.pt2`` — a ``torch.export`` program: images ``[B, 3, H, W]`` (RGB in 0..1) -> class scores
  ``[B, K, H, W]``, with normalisation and padding inside, loadable with ``torch.export.load`` and no vltk.
* ``model.onnx`` (on request) — the same graph through the TorchScript ONNX exporter, where its ops allow.

What is "used" is measured, not guessed: one probe forward records which modules run and which parameters get a
gradient; a module subtree with neither is omitted. Models with a prompter keep everything (a new label list
needs the text tower, which the probe does not see run).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Top-level entries of a training checkpoint that inference never reads.
TRAINING_ONLY = ("optimizer", "rng", "data", "history")


class SegmentationProgram(nn.Module):
    """What ``model.pt2`` runs: ``DensePredictor.predict`` (normalise, pad, backbone, decoder, crop to input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.predict(images)


def unused_prefixes(model: nn.Module, images: Tensor) -> list[str]:
    """State-dict prefixes (``"backbone.text."``, ``"backbone.logit_scale"``) no inference pass of ``model`` uses.

    A module is unused when neither it nor anything inside it was called by one probe ``predict`` and none of its
    parameters received a gradient from the model's forward outputs (``predict`` itself runs without autograd);
    parameters get gradients temporarily and are restored. A model
    with a prompter keeps everything: a new label list runs the text tower, which ``predict`` may not.
    """
    if getattr(model, "prompter", None) is not None:
        return []
    called: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda _module, _args, name=name: called.add(name))
        for name, module in model.named_modules()
    ]
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
            parameter.grad = None
        with torch.no_grad():
            model.predict(images)
        with torch.enable_grad():
            total = sum(output.float().sum() for output in _tensors(model(images)) if output.requires_grad)
            if isinstance(total, Tensor):
                total.backward()
        touched = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])
            parameter.grad = None

    def module_used(prefix: str) -> bool:
        inside = prefix + "."
        return any(name == prefix or name.startswith(inside) for name in called) or any(
            name.startswith(inside) for name in touched
        )

    keys = list(model.state_dict())
    omitted: list[str] = []
    for name, _module in model.named_modules():
        if not name or covered(name + ".", omitted):
            continue
        if not module_used(name) and any(key.startswith(name + ".") for key in keys):
            omitted.append(name + ".")
    for name, _parameter in model.named_parameters():
        owner = name.rpartition(".")[0]
        if owner and name not in touched and owner not in called and not covered(name, omitted):
            omitted.append(name)
    omitted.extend(_outside_the_module_tree(model, keys))
    return sorted(omitted)


def _outside_the_module_tree(model: nn.Module, keys: list[str]) -> list[str]:
    """Shortest prefixes of state-dict keys that no registered parameter or buffer backs.

    A component may keep a part out of the module tree on purpose (the CLIP backbones hold their frozen text
    tower there, for prompters, while their state dict stays an open_clip checkpoint); no forward of the model
    runs it, so without a prompter it is dead weight.
    """
    registered = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    registered_set = set(registered)
    prefixes: list[str] = []
    for key in keys:
        if key in registered_set or covered(key, prefixes):
            continue
        parts = key.split(".")
        found = key
        for depth in range(1, len(parts)):
            candidate = ".".join(parts[:depth]) + "."
            if not any(name.startswith(candidate) for name in registered):
                found = candidate
                break
        prefixes.append(found)
    return prefixes


def _tensors(value: Any) -> list[Tensor]:
    """Every tensor inside a model's output (dicts, lists and tuples walked)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def covered(key: str, prefixes: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``prefixes`` (an exact name) or lies under one ending in ``.``."""
    return any(key == prefix or (prefix.endswith(".") and key.startswith(prefix)) for prefix in prefixes)


def slim_state(state: dict[str, Any], model: nn.Module, omitted: list[str], source: str) -> dict[str, Any]:
    """The ``model.pt`` content: the model's used weights (backbone included) and what rebuilding it needs."""
    weights = {key: value for key, value in model.state_dict().items() if not covered(key, omitted)}
    slim = {key: value for key, value in state.items() if key not in TRAINING_ONLY and key != "model"}
    slim.update(model=weights, backbone_included=True, omitted=omitted, exported_from=source)
    slim.pop("backbone_record", None)  # the backbone is inside now: nothing to match against
    return slim


def export_program(model: nn.Module, example: Tensor, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`SegmentationProgram` at ``example``'s image size (batch size free if it can be).

    Height and width stay fixed: windows, padding and position-embedding resampling depend on them.
    """
    program = SegmentationProgram(model).eval()
    if dynamic_batch:
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)  # the example's batch must not be 1 (specialised)
            return torch.export.export(program, (example,), dynamic_shapes={"images": {0: batch}})
        except Exception:  # some graphs specialise on the batch size; a static program is still useful
            pass
    return torch.export.export(program, (example,))


def export_onnx(model: nn.Module, example: Tensor, path: Path) -> str | None:
    """Write ``path`` with the TorchScript ONNX exporter; ``None`` on success, else the short reason it failed."""
    import warnings

    temporary = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                SegmentationProgram(model).eval(),
                (example,),
                str(temporary),
                dynamo=False,
                input_names=["images"],
                output_names=["scores"],
            )
    except Exception as error:  # an unsupported op or a missing onnx package: reported, never a traceback
        temporary.unlink(missing_ok=True)
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return first.strip()
    temporary.replace(path)
    return None


__all__ = [
    "TRAINING_ONLY",
    "SegmentationProgram",
    "covered",
    "export_onnx",
    "export_program",
    "slim_state",
    "unused_prefixes",
]
