"""The public surface plugins import from — and nothing else of ``vltk``.

**Rule: plugins import from ``vltk.api`` only.** A plugin (built-in or third-party) writes
``from vltk.api import ...``; every other ``vltk`` module is internal and may change without notice.
``tests/core/test_layering.py`` walks the import graph and fails on a plugin module importing any other ``vltk``
module (``from vltk import hookimpl`` is tolerated; prefer this module), and on anyone importing a private
(underscore) name from outside its own package. What is public, grouped by what a plugin does with it:

Registering components (entry-point modules, light):
    ``hookimpl`` — the marker for hook implementations (specs: :mod:`vltk.hookspecs`);
    ``Register`` — the type of the ``register`` callback: ``register(name, factory, *, options=None,
    summary="", paper="")``; ``lazy_factory`` — ``lazy_factory(module, attribute)`` is a factory that
    imports its module only when a run builds the component.
Options and errors (light):
    ``Options`` / ``NoOptions`` — base classes of a component's pydantic options; ``coerce_options`` — accept
    an options object, a mapping or ``None`` in a factory called from Python; ``UserError`` — "fix your input",
    printed as one line by the CLI; ``RandomWeightsWarning`` — the warning category of a component built without
    pretrained weights; ``did_you_mean`` — the " did you mean 'x'?" suffix for such messages.
Shipped weights (light):
    ``BuiltinWeights`` — a weights file a package ships, declared through ``vltk_builtin_weights`` and addressed
    as ``backbone.pretrained=builtin:<name>``; ``resolve_weights_file`` — a weights option's file (a ``builtin:``
    reference resolved and checked against its sha256, a path unchanged); ``is_builtin`` — whether a value is one;
    ``sha256_of`` — a file's sha256 (what a record declares).
Benchmarks (light):
    ``bench_cases`` — every ``vltk bench`` case the loaded plugins register, by name.
Released checkpoints (torch when called):
    ``release_formats`` — every ``vltk_release_formats`` format the loaded plugins declare, by name;
    ``check_checkpoint`` — a (converted) vltk checkpoint checked against the model its configuration builds,
    returned with that configuration resolved.
Experiment loggers (light):
    ``ExperimentLogger`` — base class of a logger (``start``, ``log_scalars``, ``log_results``, ``close``);
    ``LoggerContext`` — what a logger factory is told (run folder, name, configuration, start step).
Building (light):
    ``BuildContext`` — the frozen facts a factory receives beside its options (backbone facts, pyramid
    channels, classes, text and query widths); ``context.require(...)`` states what a component needs.
Component contracts (torch; resolved on first access):
    ``Backbone``, ``Adapter``, ``Prompter``, ``Decoder``, ``Augmenter``, ``BlockHook``; ``DetectionDecoder``
    (a head on a split backbone); the protocols ``SplitBackbone`` and ``TextSpaceBackbone`` with their one
    checks ``require_split_backbone`` and ``require_text_space``, and ``require_adapter_fits`` (adapters with
    weights need a ViT unless they declare ``supports_cnn``); the helpers ``count_trainable``,
    ``named_trainable``.
Datasets (torch; resolved on first access):
    ``DenseDataSource``, ``DenseSample``, ``SPLITS``, ``colorize``; ``DetectionDataSource``,
    ``DetectionSample``, ``collate_detection``, ``BOX_COLOURS``; the Cityscapes label set
    ``CITYSCAPES_CLASSES``, ``CITYSCAPES_PALETTE``, ``IGNORE_INDEX``.
Losses (torch; resolved on first access):
    ``as_label_map``, ``logits_at_label_size`` — the one label/logit alignment every dense loss uses.

Importing this module stays light (no torch): the light names are imported eagerly; the torch-backed ones
resolve on first access, so an entry-point module can write ``from vltk.api import hookimpl, lazy_factory`` and
``vltk --help`` still starts in a fraction of a second. ``__all__`` is the complete list; the package ships a
``py.typed`` marker so type checkers read these annotations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vltk.builtin_weights import BuiltinWeights, is_builtin, resolve_weights_file, sha256_of
from vltk.context import BuildContext
from vltk.errors import RandomWeightsWarning, UserError, did_you_mean
from vltk.hookspecs import Register, hookimpl
from vltk.loggers import ExperimentLogger, LoggerContext
from vltk.options import NoOptions, Options, coerce_options
from vltk.registry import lazy_factory

if TYPE_CHECKING:
    from vltk.data.base import SPLITS, DenseDataSource, DenseSample, colorize
    from vltk.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX
    from vltk.data.detection import BOX_COLOURS, DetectionDataSource, DetectionSample, collate_detection
    from vltk.interfaces import (
        Adapter,
        Augmenter,
        Backbone,
        BlockHook,
        Decoder,
        DetectionDecoder,
        Prompter,
        SplitBackbone,
        TextSpaceBackbone,
        count_trainable,
        named_trainable,
        require_adapter_fits,
        require_split_backbone,
        require_text_space,
    )
    from vltk.models.losses import as_label_map, logits_at_label_size

#: name -> module for the names resolved on first access (they import torch).
_LAZY: dict[str, str] = {
    "Adapter": "vltk.interfaces",
    "Augmenter": "vltk.interfaces",
    "Backbone": "vltk.interfaces",
    "BlockHook": "vltk.interfaces",
    "Decoder": "vltk.interfaces",
    "DetectionDecoder": "vltk.interfaces",
    "SplitBackbone": "vltk.interfaces",
    "TextSpaceBackbone": "vltk.interfaces",
    "require_adapter_fits": "vltk.interfaces",
    "require_split_backbone": "vltk.interfaces",
    "require_text_space": "vltk.interfaces",
    "Prompter": "vltk.interfaces",
    "count_trainable": "vltk.interfaces",
    "named_trainable": "vltk.interfaces",
    "SPLITS": "vltk.data.base",
    "DenseDataSource": "vltk.data.base",
    "DenseSample": "vltk.data.base",
    "colorize": "vltk.data.base",
    "CITYSCAPES_CLASSES": "vltk.data.cityscapes",
    "CITYSCAPES_PALETTE": "vltk.data.cityscapes",
    "IGNORE_INDEX": "vltk.data.cityscapes",
    "BOX_COLOURS": "vltk.data.detection",
    "DetectionDataSource": "vltk.data.detection",
    "DetectionSample": "vltk.data.detection",
    "collate_detection": "vltk.data.detection",
    "as_label_map": "vltk.models.losses",
    "logits_at_label_size": "vltk.models.losses",
}

__all__ = [
    "BOX_COLOURS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "SPLITS",
    "Adapter",
    "Augmenter",
    "Backbone",
    "BlockHook",
    "BuildContext",
    "BuiltinWeights",
    "Decoder",
    "DenseDataSource",
    "DenseSample",
    "DetectionDataSource",
    "DetectionDecoder",
    "DetectionSample",
    "ExperimentLogger",
    "LoggerContext",
    "NoOptions",
    "Options",
    "Prompter",
    "RandomWeightsWarning",
    "Register",
    "SplitBackbone",
    "TextSpaceBackbone",
    "UserError",
    "as_label_map",
    "bench_cases",
    "check_checkpoint",
    "coerce_options",
    "colorize",
    "collate_detection",
    "count_trainable",
    "did_you_mean",
    "hookimpl",
    "is_builtin",
    "lazy_factory",
    "logits_at_label_size",
    "named_trainable",
    "require_adapter_fits",
    "release_formats",
    "resolve_weights_file",
    "sha256_of",
    "require_split_backbone",
    "require_text_space",
]


def bench_cases() -> dict[str, tuple[str, Any]]:
    """``{case name: (plugin name, case)}`` of every ``vltk_register_bench_cases`` registration (``vltk bench``).

    Duplicate names are already a :class:`UserError` naming both plugins. Light: the cases' own modules are
    imported by their plugins' hooks, not here.
    """
    from vltk.plugins import get_plugin_manager

    return get_plugin_manager().bench_cases()


def release_formats() -> dict[str, tuple[str, Any]]:
    """``{format name: (plugin name, format)}`` of every released-checkpoint format the loaded plugins declare
    (``vltk_release_formats``); ``vltk convert`` detects a release file's format among these."""
    from vltk.engine.releases import release_formats as formats

    return formats()


def check_checkpoint(checkpoint: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``checkpoint`` (``model``, ``config``, ``class_names``, ...) with its configuration resolved (``overrides``
    applied), after checking on the meta device that its weights fit the model that configuration builds; a
    misfit is one :class:`UserError` naming the first keys with both shapes."""
    from vltk.engine.releases import check_checkpoint as check

    return check(checkpoint, overrides)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vltk.api' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
