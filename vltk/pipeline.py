"""build_model: resolve the run once, build the backbone first, grow the build context, hand it to the rest.

The order matters and is the whole point of this module: adapters need the backbone's width, depth and patch size;
decoders need the pyramid's channels, the number of classes and the adapter's query width; prompters need the
backbone's text tower and the class names. Each stage adds its facts to a frozen
:class:`~vltk.context.BuildContext` (``context.evolve(...)``) and every factory gets ``(options, context)``.
Components never import each other, and the compatibility rules between them are the contracts of
:mod:`vltk.interfaces`, checked here (and by the task) in one place each.

What differs between tasks (which backbones and decoders fit, how the parts are wired into one module) belongs to
the :class:`~vltk.tasks.Task`; this module holds the steps every task shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltk.config import RunConfig, build_config, resolve
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.plugins import get_plugin_manager
from vltk.resolved import ResolvedRun

if TYPE_CHECKING:
    from torch import nn

    from vltk.tasks import Task


def as_resolved_run(config: ResolvedRun | RunConfig | dict[str, Any] | str | Path) -> ResolvedRun:
    """Accept a ResolvedRun (returned as it is), a RunConfig, a plain dict, a recipe name or a YAML path.

    Building a model or a data source logs nothing, so a configuration given here is resolved without its
    ``loggers`` (a Python caller with only the component plugins it needs loaded does not need a logger plugin).
    """
    if isinstance(config, ResolvedRun):
        return config
    manager = get_plugin_manager()
    if isinstance(config, dict):
        config = build_config(base=config)
    elif not isinstance(config, RunConfig):
        config = build_config(str(config), recipe_dirs=manager.recipe_dirs())
    return resolve(config.model_copy(update={"loggers": []}), manager.get_registry())


def build_data_source(config: ResolvedRun | RunConfig | dict[str, Any] | str | Path) -> Any:
    """The dataset factory's result for the run's task (a :class:`vltk.data.base.DenseDataSource`, or for
    ``task: detection`` a :class:`vltk.data.detection.DetectionDataSource`); the other kind is a UserError."""
    from vltk.tasks import get_task

    run = as_resolved_run(config)
    source = run.dataset.build(BuildContext(task=run.task))
    get_task(run.task).check_data_source(source, run.dataset.name)
    return source


def build_model(
    config: ResolvedRun | RunConfig | dict[str, Any] | str | Path,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    ignore_index: int | None = None,
) -> nn.Module:
    """The model of a run: a :class:`vltk.models.DensePredictor` (segmentation) or a
    :class:`vltk.models.detector.Detector` (detection), as the run's task assembles it.

    ``class_names`` and ``ignore_index`` default to the configured dataset's (building the data source is cheap:
    it only indexes files, or for ``synthetic`` nothing at all).
    """
    from vltk.tasks import get_task

    run = as_resolved_run(config)
    if class_names is None:
        source = build_data_source(run)
        class_names = list(source.classes)
        ignore_index = getattr(source, "ignore_index", 255) if ignore_index is None else ignore_index
    if not class_names:
        raise UserError("the model needs at least one class name")
    context = BuildContext(
        task=run.task, class_names=tuple(class_names), ignore_index=255 if ignore_index is None else ignore_index
    )
    return get_task(run.task).build_model(run, context)


@dataclass(frozen=True)
class Components:
    """Everything a task wires into one model, and the build context as the decoder saw it."""

    backbone: Any
    adapter: Any
    prompter: Any
    augmenters: tuple[Any, ...]
    decoder: Any
    context: BuildContext


def build_components(run: ResolvedRun, context: BuildContext, task: Task) -> Components:
    """Build every component of ``run`` in order, growing ``context``; ``task`` checks what fits its task.

    backbone -> (task check) -> adapter -> (fit check) -> ``adapter.setup(backbone)`` and the backbone's own
    ``restrict_trainable()`` (its fixed parts win over the adapter's blanket ``requires_grad``) -> prompter and
    augmenters (they see the backbone) -> the task's decoder context (e.g. widened by the score map) -> decoder.
    """
    from vltk.interfaces import require_text_space

    backbone = run.backbone.build(context)
    task.check_backbone(backbone, run)
    context = context.with_backbone(backbone)
    adapter = run.adapter.build(context)
    task.check_adapter(adapter, backbone, run)
    adapter.setup(backbone)
    backbone.restrict_trainable()
    context = context.evolve(query_dims=adapter.query_dims)
    prompter = None
    if run.prompter is not None:
        require_text_space(backbone, needed_by=f"prompter '{run.prompter.name}'", backbone_name=run.backbone.name)
        prompter = run.prompter.build(context)
    augmenters = tuple(item.build(context) for item in run.augmenters)
    context = task.decoder_context(context, prompter)
    decoder = run.decoder.build(context)
    task.check_decoder(decoder, run)
    return Components(backbone, adapter, prompter, augmenters, decoder, context)


__all__ = ["Components", "as_resolved_run", "build_components", "build_data_source", "build_model"]
