"""build_model: resolve component names, build the backbone first, hand its facts to everything else.

The order matters and is the whole point of this module: adapters need the backbone's width, depth and
patch size; decoders need the pyramid's channels, the number of classes, and the adapter's query width;
prompters need the backbone's text tower and the class names. Components never import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.config import RunConfig, build_config, component_options, resolve
from vltk.errors import UserError
from vltk.plugins import get_plugin_manager
from vltk.registry import Registry


def as_run_config(config: RunConfig | dict[str, Any] | str | Path) -> RunConfig:
    """Accept a RunConfig, a plain dict, a recipe name or a YAML path."""
    manager = get_plugin_manager()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return build_config(base=config)
    return build_config(str(config), recipe_dirs=manager.recipe_dirs())


def build_data_source(config: RunConfig, registry: Registry | None = None) -> Any:
    """The dataset factory's result (a :class:`vltk.data.base.DenseDataSource`, or for ``task: detection`` a
    :class:`vltk.data.detection.DetectionDataSource`); a dataset of the other task is a :class:`UserError`."""
    registry = registry or get_plugin_manager().get_registry()
    options = component_options(registry, "dataset", config.dataset)
    source = registry.get("dataset", config.dataset.name).build(options)
    provides = getattr(source, "task", "segmentation")
    if provides != config.task:
        what = {"segmentation": "label maps", "detection": "boxes"}
        hint = "synthetic-det or dwd" if config.task == "detection" else "synthetic or another segmentation dataset"
        raise UserError(
            f"dataset '{config.dataset.name}' provides {what.get(provides, provides)} ({provides}) but task is "
            f"'{config.task}'; use {hint}, or task={provides}"
        )
    return source


def build_model(
    config: RunConfig | dict[str, Any] | str | Path,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    ignore_index: int = 255,
) -> Any:
    """Build a :class:`vltk.models.DensePredictor` from a run config.

    ``class_names`` defaults to the configured dataset's classes (building the data source is cheap: it only
    indexes files, or for ``synthetic`` nothing at all).
    """
    from vltk.models import DensePredictor

    registry = get_plugin_manager().get_registry()
    config = resolve(as_run_config(config), registry)
    if config.task == "detection":
        return build_detector(config, class_names=class_names)
    if class_names is None:
        source = build_data_source(config, registry)
        class_names = list(source.classes)
        ignore_index = getattr(source, "ignore_index", ignore_index)
    if not class_names:
        raise UserError("the model needs at least one class name")

    def options(kind: str, section: Any) -> Any:
        return component_options(registry, kind, section)

    backbone = registry.get("backbone", config.backbone.name).build(options("backbone", config.backbone))
    is_vit = bool(getattr(backbone, "is_vit", True))
    context: dict[str, Any] = {
        "embed_dim": backbone.embed_dim,
        "num_layers": backbone.num_layers,
        "patch_size": backbone.patch_size,
        "has_cls_token": backbone.has_cls_token,
        "is_vit": is_vit,
        "text_dim": backbone.text_dim,
        # per-level widths: a CNN's levels differ (clip-resnet: 256/512/1024/2048), a ViT's are all embed_dim
        "in_channels": [int(width) for width in getattr(backbone, "out_channels", (backbone.embed_dim,) * 4)],
        "strides": list(backbone.strides),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "ignore_index": ignore_index,
    }
    adapter = registry.get("adapter", config.adapter.name).build(options("adapter", config.adapter), **context)
    if not is_vit and any(True for _ in adapter.parameters()) and not getattr(adapter, "supports_cnn", False):
        # adapters with their own weights refine ViT token blocks; a CNN has none (frozen/full have no weights)
        raise UserError(
            f"adapter '{config.adapter.name}' refines the token blocks of a ViT, but backbone "
            f"'{config.backbone.name}' is a CNN; use adapter=frozen or adapter=full with it"
        )
    adapter.setup(backbone)
    restrict_trainable = getattr(backbone, "restrict_trainable", None)
    if callable(restrict_trainable):
        restrict_trainable()  # the backbone's own fixed parts (e.g. clip-resnet trainable/bn) win over the adapter
    context["query_dims"] = adapter.query_dims
    prompter = None
    if config.prompter is not None:
        prompter = registry.get("prompter", config.prompter.name).build(
            options("prompter", config.prompter), backbone=backbone, **context
        )
    augmenters = [
        registry.get("augmenter", item.name).build(options("augmenter", item), backbone=backbone, **context)
        for item in config.augmenters
    ]
    score_concat_index = getattr(prompter, "score_concat_index", None) if prompter is not None else None
    if score_concat_index is not None:
        from vltk.models.text_guidance import widen_in_channels

        # the K-channel pixel-text score map is appended to that level before the decoder sees the pyramid
        context["in_channels"] = widen_in_channels(context["in_channels"], score_concat_index, len(class_names))
    decoder = registry.get("decoder", config.decoder.name).build(options("decoder", config.decoder), **context)
    return DensePredictor(backbone, adapter, decoder, prompter=prompter, augmenters=augmenters, class_names=class_names)


def build_detector(
    config: RunConfig | dict[str, Any] | str | Path, *, class_names: list[str] | tuple[str, ...] | None = None
) -> Any:
    """Build a :class:`vltk.models.detector.Detector` (``task: detection``) from a run config.

    Same order as :func:`build_model`: backbone first; the adapter decides what of it trains (then the
    backbone's own ``restrict_trainable``, e.g. clip-resnet's ``trainable`` stages); prompter and augmenters get
    the backbone; the decoder gets the backbone too (it runs ``stage_b``/``pool`` on RoIs) plus the split's
    facts (``channels_a``, ``channels_b``, ``stride_a``).
    """
    from vltk.models.detector import Detector, detector_facts

    registry = get_plugin_manager().get_registry()
    config = resolve(as_run_config(config), registry)
    if class_names is None:
        class_names = list(build_data_source(config, registry).classes)
    if not class_names:
        raise UserError("the model needs at least one class name")

    def options(kind: str, section: Any) -> Any:
        return component_options(registry, kind, section)

    backbone = registry.get("backbone", config.backbone.name).build(options("backbone", config.backbone))
    missing = [name for name in ("stage_a", "stage_b", "pool") if not callable(getattr(backbone, name, None))]
    if missing:
        raise UserError(
            f"task detection needs a backbone split into stage_a/stage_b/pool; '{config.backbone.name}' has no "
            f"{', '.join(missing)} (use backbone=clip-resnet)"
        )
    context: dict[str, Any] = {
        "embed_dim": backbone.embed_dim,
        "num_layers": backbone.num_layers,
        "patch_size": backbone.patch_size,
        "has_cls_token": backbone.has_cls_token,
        "is_vit": bool(getattr(backbone, "is_vit", True)),
        "text_dim": backbone.text_dim,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "task": "detection",
        **detector_facts(backbone),
    }
    adapter = registry.get("adapter", config.adapter.name).build(options("adapter", config.adapter), **context)
    if any(True for _ in adapter.parameters()):
        raise UserError(
            f"adapter '{config.adapter.name}' refines backbone blocks, which detection does not run through; "
            "use adapter=full (train the backbone's `trainable` stages) or adapter=frozen"
        )
    adapter.setup(backbone)
    restrict_trainable = getattr(backbone, "restrict_trainable", None)
    if callable(restrict_trainable):
        restrict_trainable()
    prompter = None
    if config.prompter is not None:
        prompter = registry.get("prompter", config.prompter.name).build(
            options("prompter", config.prompter), backbone=backbone, **context
        )
    augmenters = [
        registry.get("augmenter", item.name).build(options("augmenter", item), backbone=backbone, **context)
        for item in config.augmenters
    ]
    decoder = registry.get("decoder", config.decoder.name).build(
        options("decoder", config.decoder), backbone=backbone, **context
    )
    if getattr(decoder, "task", "segmentation") != "detection":
        raise UserError(
            f"decoder '{config.decoder.name}' predicts label maps; task detection needs a detection decoder "
            "(e.g. clip-faster-rcnn)"
        )
    return Detector(backbone, adapter, decoder, prompter=prompter, augmenters=augmenters, class_names=class_names)
