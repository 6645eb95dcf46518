"""vltk: vision-language and vision foundation models transferred to dense prediction under domain shift.

The public Python API. ``import vltk`` stays light (no torch): components are built on demand.

    import vltk
    vltk.list_components("adapter")                    # ['frozen', 'full', 'rein', ...]
    rein = vltk.create("adapter", "rein", embed_dim=1024, num_layers=24, patch_size=16, lora_dim=16)
    model = vltk.build_model("path/to/recipe.yaml")    # or a RunConfig, or a dict
    results = vltk.train("rein/synthetic", output="runs/r", overrides={"train.iters": 50})
    segmenter = vltk.load("runs/r/best.pt")             # .predict(image) -> label map, .class_names

This module is the API for *using* vltk (``__all__`` below). Plugins that *extend* it import from
:mod:`vltk.api` only; every other module is internal.
"""

from __future__ import annotations

from typing import Any

from vltk.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "create", "hookimpl", "list_components", "load", "train"]


def list_components(kind: str) -> list[str]:
    """Names registered for a component kind (``backbone``, ``adapter``, ``decoder``, ...)."""
    from vltk.plugins import get_registry

    return get_registry().names(kind)


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build one component outside a run (notebooks, tests): keyword arguments that are options of the component
    are validated by its options model; the others are build-context facts (``embed_dim``, ``num_layers``,
    ``num_classes``, ``class_names``, ``backbone``...; see :class:`vltk.context.BuildContext`)."""
    from vltk.context import BuildContext
    from vltk.plugins import get_registry

    spec = get_registry().get(kind, name)
    option_names = set(spec.options.model_fields)
    options = spec.validate({key: value for key, value in kwargs.items() if key in option_names})
    facts = {key: value for key, value in kwargs.items() if key not in option_names}
    unknown = sorted(set(facts) - set(BuildContext.field_names()))
    if unknown:
        from vltk.errors import UserError, did_you_mean

        hint = did_you_mean(unknown[0], [*option_names, *BuildContext.field_names()])
        raise UserError(
            f"{kind} '{name}': {unknown[0]!r} is neither an option nor a build-context fact;{hint} "
            f"options: {', '.join(sorted(option_names)) or 'none'}"
        )
    return spec.build(options, BuildContext.from_facts(facts))


def build_model(config: Any, **kwargs: Any) -> Any:
    """Build a :class:`vltk.models.DensePredictor` from a run config (RunConfig, dict, or YAML path/recipe)."""
    from vltk.pipeline import build_model as _build_model

    return _build_model(config, **kwargs)


def train(config: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Train one run, return its final per-domain results; see :func:`vltk.training.train` for the arguments
    (``output=``, ``overrides=``, ``resume=``, ``quiet=``)."""
    from vltk.training import train as _train

    return _train(config, **kwargs)


def load(checkpoint: Any, **kwargs: Any) -> Any:
    """A trained segmentation model ready to ``predict(images)`` (:class:`vltk.predictor.Predictor`); see
    :func:`vltk.predictor.load` for ``backbone_weights=`` and ``device=``."""
    from vltk.predictor import load as _load

    return _load(checkpoint, **kwargs)
