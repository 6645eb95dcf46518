"""ResolvedRun: a run configuration after the one validation of every component's options.

:func:`vltk.config.resolve` looks each component section up in the registry and validates its options with the
component's own options model — once per run. What it returns is frozen and travels everywhere a run goes (the
CLI, the task, the pipeline, the trainer), so nothing downstream validates again: factories get the validated
options object, and ``config.resolved.yaml`` is written from :attr:`ResolvedRun.config`, which has every default
written back. Plain Python (no torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vltk.config import RunConfig
    from vltk.context import BuildContext
    from vltk.options import Options
    from vltk.registry import ComponentSpec


@dataclass(frozen=True)
class ResolvedComponent:
    """One component section: where it sits in the config, the registered spec and its validated options."""

    section: str
    spec: ComponentSpec
    options: Options

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def build(self, context: BuildContext | None = None) -> Any:
        """The component, built by its factory from the validated options and the build context."""
        return self.spec.build(self.options, context)

    def to_dict(self) -> dict[str, Any]:
        """``{name, **options}`` with every default written back (a section of ``config.resolved.yaml``)."""
        return {"name": self.name, **self.options.model_dump(mode="json")}


@dataclass(frozen=True)
class ResolvedRun:
    """A validated run: the full :class:`~vltk.config.RunConfig` plus each component section resolved."""

    config: RunConfig
    backbone: ResolvedComponent
    adapter: ResolvedComponent
    decoder: ResolvedComponent
    dataset: ResolvedComponent
    prompter: ResolvedComponent | None = None
    augmenters: tuple[ResolvedComponent, ...] = ()
    #: experiment loggers (not part of the model: :meth:`components` leaves them out)
    loggers: tuple[ResolvedComponent, ...] = ()

    @property
    def task(self) -> str:
        return self.config.task

    def components(self) -> Iterator[ResolvedComponent]:
        """Every component section, in build order (dataset first: the model needs its classes)."""
        yield self.dataset
        yield self.backbone
        yield self.adapter
        if self.prompter is not None:
            yield self.prompter
        yield from self.augmenters
        yield self.decoder

    def with_settings(self, **changes: Any) -> ResolvedRun:
        """A copy with top-level settings changed (``output``, ``device``...); component sections cannot change
        here, since that would need their options validated again (build a new config and resolve it)."""
        sections = {"backbone", "adapter", "prompter", "decoder", "dataset", "augmenters", "loggers"} & set(changes)
        if sections:
            raise ValueError(f"with_settings cannot change component sections {sorted(sections)}; resolve anew")
        config = self.config.model_validate({**self.config.to_dict(), **changes})
        return ResolvedRun(
            config=config,
            backbone=self.backbone,
            adapter=self.adapter,
            decoder=self.decoder,
            dataset=self.dataset,
            prompter=self.prompter,
            augmenters=self.augmenters,
            loggers=self.loggers,
        )


__all__ = ["ResolvedComponent", "ResolvedRun"]
