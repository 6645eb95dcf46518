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
    """The dataset factory's result (a :class:`vltk.data.base.DenseDataSource`)."""
    registry = registry or get_plugin_manager().get_registry()
    options = component_options(registry, "dataset", config.dataset)
    return registry.get("dataset", config.dataset.name).build(options)


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
    if class_names is None:
        source = build_data_source(config, registry)
        class_names = list(source.classes)
        ignore_index = getattr(source, "ignore_index", ignore_index)
    if not class_names:
        raise UserError("the model needs at least one class name")

    def options(kind: str, section: Any) -> Any:
        return component_options(registry, kind, section)

    backbone = registry.get("backbone", config.backbone.name).build(options("backbone", config.backbone))
    context: dict[str, Any] = {
        "embed_dim": backbone.embed_dim,
        "num_layers": backbone.num_layers,
        "patch_size": backbone.patch_size,
        "has_cls_token": backbone.has_cls_token,
        "text_dim": backbone.text_dim,
        "in_channels": [backbone.embed_dim] * 4,
        "strides": list(backbone.strides),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "ignore_index": ignore_index,
    }
    adapter = registry.get("adapter", config.adapter.name).build(options("adapter", config.adapter), **context)
    adapter.setup(backbone)
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
    decoder = registry.get("decoder", config.decoder.name).build(options("decoder", config.decoder), **context)
    return DensePredictor(backbone, adapter, decoder, prompter=prompter, augmenters=augmenters, class_names=class_names)
