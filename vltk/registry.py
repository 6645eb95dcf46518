"""Component registry: every name a user can type after ``--backbone`` & co., who provides it, how to build it.

The registry is filled by the plugin manager calling the ``vltk_register_*`` hooks with a ``register``
callback bound to one component kind and one plugin, so a duplicate name can say which two plugins collide.
Lookups of unknown names raise :class:`vltk.errors.UserError` with the closest match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vltk.errors import UserError, did_you_mean
from vltk.options import NoOptions, Options

if TYPE_CHECKING:
    from vltk.context import BuildContext

#: Component kinds in the order ``vltk list`` shows them. Plurals are accepted on the command line.
KINDS: tuple[str, ...] = ("backbone", "adapter", "prompter", "decoder", "augmenter", "dataset")


def normalise_kind(kind: str) -> str:
    """Accept ``adapters`` as well as ``adapter``; unknown kinds are a user error with a suggestion."""
    singular = kind[:-1] if kind.endswith("s") and kind[:-1] in KINDS else kind
    if singular not in KINDS:
        raise UserError(f"unknown component kind '{kind}';{did_you_mean(kind, KINDS)} kinds: {', '.join(KINDS)}")
    return singular


def lazy_factory(module: str, attribute: str) -> Callable[..., Any]:
    """A factory that imports ``module.attribute`` on its first call and forwards ``(options, context)``.

    Entry-point modules register components with it so that loading plugins (``vltk list``, ``vltk --help``)
    never imports torch or the component's module; only a run that builds the component pays for the import.
    """

    def factory(options: Any, context: Any = None) -> Any:
        import importlib

        return getattr(importlib.import_module(module), attribute)(options, context)

    factory.__qualname__ = f"{module}.{attribute}"
    return factory


@dataclass(frozen=True)
class ComponentSpec:
    """What ``register(...)`` recorded: enough to list, document, validate and build a component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[Options]
    plugin: str
    summary: str = ""
    paper: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, values: dict[str, Any] | None = None, *, where: str | None = None) -> Options:
        """Validate option values with the component's own model; errors name the dotted key."""
        from pydantic import ValidationError

        prefix = where or self.kind
        try:
            return self.options.model_validate(values or {})
        except ValidationError as error:
            raise UserError(format_validation_error(error, prefix, self)) from None

    def build(self, options: Options, context: BuildContext | None = None) -> Any:
        """Call the factory with an already validated options object (see :func:`vltk.config.resolve`) and the
        build context; validating here again would validate every option twice per run."""
        if not isinstance(options, self.options):
            raise TypeError(
                f"{self.kind} '{self.name}': build() takes a validated {self.options.__name__}, got "
                f"{type(options).__name__}; call spec.validate(values) first"
            )
        from vltk.context import BuildContext

        return self.factory(options, context if context is not None else BuildContext())


def format_validation_error(error: Any, prefix: str, spec: ComponentSpec | None = None) -> str:
    """One readable message per pydantic error, keys written as dotted paths users can type back."""
    lines = []
    known = list(spec.options.model_fields) if spec is not None else []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            bad = str(item["loc"][-1]) if item["loc"] else ""
            hint = did_you_mean(bad, known)
            options = f" (options: {', '.join(known)})" if known else ""
            message = f"unknown option{';' + hint if hint else ''}{options}"
        elif "input" in item and item["type"] != "missing":
            message = f"{message} (got {item['input']!r})"
        lines.append(f"{key}: {message}")
    return "invalid configuration: " + "; ".join(lines)


class Registry:
    """Components by kind and name. Filled once per plugin manager; read by the CLI and the pipeline."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}

    def register_callback(self, kind: str, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's ``vltk_register_<kind>s`` hook."""

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            options: type[Options] | None = None,
            summary: str = "",
            paper: str = "",
            **extra: Any,
        ) -> None:
            self.add(
                ComponentSpec(
                    kind=kind,
                    name=name,
                    factory=factory,
                    options=options or NoOptions,
                    plugin=plugin,
                    summary=summary,
                    paper=paper,
                    extra=extra,
                )
            )

        return register

    def add(self, spec: ComponentSpec) -> None:
        if not spec.name or not isinstance(spec.name, str):
            raise ValueError(f"plugin '{spec.plugin}' registered a {spec.kind} without a name")
        if not (isinstance(spec.options, type) and issubclass(spec.options, Options)):
            raise TypeError(
                f"plugin '{spec.plugin}' registered {spec.kind} '{spec.name}' with options={spec.options!r}; "
                "pass a subclass of vltk.options.Options"
            )
        existing = self._specs[spec.kind].get(spec.name)
        if existing is not None:
            raise ValueError(
                f"{spec.kind} '{spec.name}' is registered twice: by plugin '{existing.plugin}' and by plugin "
                f"'{spec.plugin}'; block one of them with VLTK_BLOCK_PLUGINS={spec.plugin} or rename it"
            )
        self._specs[spec.kind][spec.name] = spec

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs[normalise_kind(kind)])

    def specs(self, kind: str) -> list[ComponentSpec]:
        kind = normalise_kind(kind)
        return [self._specs[kind][name] for name in sorted(self._specs[kind])]

    def get(self, kind: str, name: str) -> ComponentSpec:
        """Look a component up; an unknown name is a user error suggesting the closest registered name."""
        kind = normalise_kind(kind)
        try:
            return self._specs[kind][name]
        except KeyError:
            known = sorted(self._specs[kind])
            hint = did_you_mean(name, known)
            listing = ", ".join(known) if known else "none registered"
            raise UserError(f"unknown {kind} '{name}';{hint} available: {listing} (see `vltk list {kind}s`)") from None
