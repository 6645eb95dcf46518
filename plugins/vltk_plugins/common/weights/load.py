"""Loading a local weights file into a backbone: read, detect the layout, convert, resample, check, load.

Every backbone takes ``pretrained=<local file>`` or ``pretrained=null`` (nothing is ever downloaded) and describes
itself with a :class:`WeightSpec`: its registered name (which picks the layouts it reads,
:func:`~vltk_plugins.common.weights.formats.formats_for`), where its patch kernel and position grid are, how to
resample them, and which parts a file may lack (the text tower of a vision-only file, the image-text projection
of a pre-training file). :func:`prepare_weights` turns a file into the backbone's state dict or one
:class:`~vltk.api.UserError` that names the file, what was detected, what was expected and what to change;
:func:`load_pretrained` loads the result, strictly unless an optional part is missing (then with a warning);
``vltk convert`` writes the result to disk.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from vltk.api import RandomWeightsWarning, UserError, resolve_weights_file
from vltk_plugins.common.weights.formats import ConvertContext, WeightFormat, detect_format, formats_for
from vltk_plugins.common.weights.read import Checkpoint, read_checkpoint
from vltk_plugins.common.weights.resample import ResampleMode, resample_spatial

logger = logging.getLogger(__name__)

#: How many offending keys an error lists.
SHOWN_KEYS = 5


@dataclass(frozen=True)
class OptionalPart:
    """A part of the model a file may lack entirely (never partly): ``name`` for messages, the key ``prefixes``
    it owns (a key equal to a prefix or starting with ``prefix + "."``), what stays random when it is missing."""

    name: str
    prefixes: tuple[str, ...]
    effect: str

    def owns(self, key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in self.prefixes)


#: An open_clip model's text tower (and logit scale): absent from vision-only files and backbone exports.
TEXT_TOWER = OptionalPart("text tower", ("text", "logit_scale", "logit_bias"), "text embeddings are meaningless")


@dataclass(frozen=True)
class WeightSpec:
    """What the loader needs to know about one backbone.

    ``backbone`` is the registered name (``"eva02"``): it selects the layouts read and names the backbone in
    errors about files meant for another one. ``label`` prefixes messages ("eva02 (tiny)"), ``what`` names the
    file to pass ("EVA02 checkpoint"). ``patch_key``/``pos_key``/``grid``/``num_prefix_tokens`` locate the patch
    kernel and the position grid in the target layout; ``patch_resample`` is how a different one is converted.
    ``optional`` lists the parts a file may lack; ``validate(state, target, path)`` runs after the layout
    conversion for backbone-specific checks with a better message than a key diff (DINOv2's registers).
    """

    backbone: str
    label: str
    what: str
    patch_key: str
    pos_key: str
    grid: tuple[int, int]
    num_prefix_tokens: int = 1
    patch_resample: ResampleMode = "flexi"
    optional: tuple[OptionalPart, ...] = ()
    validate: Callable[[Mapping[str, Tensor], Mapping[str, Tensor], str], None] | None = None
    variant: str | None = None


@dataclass(frozen=True)
class PreparedWeights:
    """A file converted for one backbone: ``state`` fits the target's keys and shapes (a subset when parts are
    ``missing``); ``format`` and ``checkpoint`` say what was read, ``notes`` what was resampled or dropped."""

    state: dict[str, Tensor]
    format: WeightFormat
    checkpoint: Checkpoint
    missing: tuple[OptionalPart, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _titles(backbone: str) -> str:
    return "; ".join(candidate.title for candidate in formats_for(backbone))


def _first_keys(keys: list[str]) -> str:
    return ", ".join(f"'{key}'" for key in keys[:SHOWN_KEYS])


def detect_for(checkpoint: Checkpoint, spec: WeightSpec) -> WeightFormat:
    """The layout of ``checkpoint`` if ``spec``'s backbone reads it, else a :class:`UserError` naming what was
    detected (and which backbone reads that) and the layouts this backbone reads."""
    path = checkpoint.path
    found = detect_format(checkpoint)
    if found is None:
        raise UserError(
            f"{spec.label}: '{path}' is in no weight layout vltk knows (first keys: "
            f"{_first_keys(sorted(checkpoint.state))}); pass a file {spec.backbone} reads ({_titles(spec.backbone)})"
        )
    if found.backbone != spec.backbone:
        raise UserError(
            f"{spec.label}: '{path}' holds {found.title} weights, which backbone {found.backbone} reads, not "
            f"{spec.backbone}; use backbone {found.backbone} for this file, or pass a file {spec.backbone} reads "
            f"({_titles(spec.backbone)})"
        )
    return found


def check_fit(
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    *,
    path: str,
    label: str,
    origins: Mapping[str, str] | None = None,
) -> list[str]:
    """Raise :class:`UserError` for keys of another shape or keys the model lacks; return the missing keys.

    Run after :func:`~vltk_plugins.common.weights.resample.resample_spatial`, so a shape difference left here is
    one no conversion can fix. The message lists the first offending keys with both shapes; ``origins`` maps a
    converted key to the file's key, so the user sees a name that is in the file too.
    """
    origins = origins or {}

    def name(key: str) -> str:
        origin = origins.get(key, key)
        return f"'{key}'" if origin == key else f"'{key}' (file: '{origin}')"

    mismatched = [key for key, wanted in target.items() if key in state and state[key].shape != wanted.shape]
    if mismatched:
        shown = ", ".join(
            f"{name(key)} has shape {tuple(state[key].shape)} in the file but {tuple(target[key].shape)} in the model"
            for key in mismatched[:SHOWN_KEYS]
        )
        raise UserError(
            f"{label}: '{path}' does not fit this model ({len(mismatched)} keys differ): {shown}; check "
            "variant/model/patch_size"
        )
    unexpected = [key for key in state if key not in target]
    if unexpected:
        shown = [origins.get(key, key) for key in unexpected[:3]]
        raise UserError(
            f"{label}: '{path}' has {len(unexpected)} keys this model lacks (first: {shown}); is it a checkpoint "
            "of another model? check variant/model"
        )
    return [key for key in target if key not in state]


def _missing_parts(
    missing: list[str], target: Mapping[str, Tensor], spec: WeightSpec, path: str
) -> tuple[OptionalPart, ...]:
    """The optional parts missing entirely; an error for a required key or a part missing only partly."""
    absent: list[OptionalPart] = []
    for part in spec.optional:
        lacking = [key for key in missing if part.owns(key)]
        if lacking and len(lacking) != sum(part.owns(key) for key in target):
            raise UserError(
                f"{spec.label}: '{path}' has an incomplete {part.name} (missing {_first_keys(lacking)}); pass a "
                f"checkpoint with the whole {part.name} or without it"
            )
        if lacking:
            absent.append(part)
    required = [key for key in missing if not any(part.owns(key) for part in spec.optional)]
    if required:
        raise UserError(
            f"{spec.label}: '{path}' lacks {len(required)} image-tower keys (first: {required[:3]}); check "
            "variant/model"
        )
    return tuple(absent)


def prepare_checkpoint(checkpoint: Checkpoint, target: Mapping[str, Tensor], spec: WeightSpec) -> PreparedWeights:
    """Convert a read ``checkpoint`` for the model whose state dict is ``target`` (meta tensors do: only names,
    shapes and dtypes are read): detect the layout, rename, check, resample. Every problem is one
    :class:`UserError`; see the module docstring."""
    path = checkpoint.path
    found = detect_for(checkpoint, spec)
    state, origins = found.convert(dict(checkpoint.state), ConvertContext(target, spec.num_prefix_tokens))
    kept = set(origins.values())
    dropped = [key for key in checkpoint.state if key not in kept]
    if spec.validate is not None:
        spec.validate(state, target, path)
    notes = resample_spatial(
        state,
        target,
        spec.patch_key,
        spec.pos_key,
        spec.grid,
        spec.label,
        spec.num_prefix_tokens,
        mode=spec.patch_resample,
    )
    if dropped:
        notes.append(f"dropped {len(dropped)} entries inference does not use ({_first_keys(dropped)})")
    missing = check_fit(state, target, path=path, label=spec.label, origins=origins)
    absent = _missing_parts(missing, target, spec, path)
    logger.info("%s: '%s' is %s", spec.label, path, found.title)
    return PreparedWeights(state=state, format=found, checkpoint=checkpoint, missing=absent, notes=tuple(notes))


def prepare_weights(path: str, target: Mapping[str, Tensor], spec: WeightSpec) -> PreparedWeights:
    """Read ``path`` (:func:`~vltk_plugins.common.weights.read.read_checkpoint`) and :func:`prepare_checkpoint` it.

    ``builtin:<name>`` is the shipped file of that name, checked for this backbone and variant and against its
    sha256 first (:func:`vltk.api.resolve_weights_file`)."""
    file = resolve_weights_file(path, backbone=spec.backbone, variant=spec.variant)
    return prepare_checkpoint(read_checkpoint(file, spec.label, spec.what), target, spec)


def load_pretrained(module: nn.Module, path: str, spec: WeightSpec) -> PreparedWeights:
    """Load ``path`` into ``module`` (whose ``state_dict()`` is the target layout) through :func:`prepare_weights`.

    Strict unless an optional part is missing; each missing part warns once, saying what stays random.
    """
    prepared = prepare_weights(path, module.state_dict(), spec)
    for part in prepared.missing:
        warnings.warn(
            f"{spec.label}: '{path}' has no {part.name}; the {part.name} keeps random weights ({part.effect})",
            stacklevel=3,
        )
    module.load_state_dict(prepared.state, strict=not prepared.missing)
    return prepared


def warn_random(label: str, what: str = "open_clip checkpoint") -> None:
    """The one-line warning every backbone gives when it is built without weights (``pretrained=None``).

    ``what`` is the kind of file that would give it meaningful features ("DINOv2 checkpoint").
    """
    warnings.warn(
        f"{label}: pretrained=None, so the backbone has random weights; pass pretrained=<local {what}> for "
        "meaningful features",
        RandomWeightsWarning,
        stacklevel=3,
    )


def load_pretrained_or_warn(module: nn.Module, pretrained: str | None, spec: WeightSpec) -> PreparedWeights | None:
    """What a backbone's factory does with ``pretrained``: :func:`load_pretrained` from that local file, or, for
    ``None``, keep the random weights and say so once (:func:`warn_random`)."""
    if pretrained is None:
        warn_random(spec.label, spec.what)
        return None
    return load_pretrained(module, pretrained, spec)


__all__ = [
    "SHOWN_KEYS",
    "TEXT_TOWER",
    "OptionalPart",
    "PreparedWeights",
    "WeightSpec",
    "check_fit",
    "detect_for",
    "load_pretrained",
    "load_pretrained_or_warn",
    "prepare_checkpoint",
    "prepare_weights",
    "warn_random",
]
