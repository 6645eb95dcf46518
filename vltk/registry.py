"""Component registry: every name a user can type after ``--backbone`` & co., who provides it, how to build it.

The registry is filled by the plugin manager calling the ``vltk_register_*`` hooks with a ``register``
callback bound to one component kind and one plugin, so a duplicate name can say which two plugins collide.
Every mistake a plugin can make while registering (an unknown keyword, a duplicate name, an options class that is
not an :class:`~vltk.options.Options`) and lookups of unknown names raise :class:`vltk.errors.UserError`: one line
naming the plugin and the component, which the CLI prints as ``Error: ...`` without a traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vltk.errors import UserError, did_you_mean
from vltk.options import NoOptions, Options

if TYPE_CHECKING:
    from vltk.context import BuildContext
    from vltk.hookspecs import Register

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


def format_validation_error(
    error: Any, prefix: str, spec: ComponentSpec | None = None, suggest: Callable[[tuple], str] | None = None
) -> str:
    """One readable message per pydantic error, keys written as dotted paths users can type back.

    An unknown key gets the closest option of ``spec`` as a suggestion, or what ``suggest(loc)`` says.
    """
    lines = []
    known = list(spec.options.model_fields) if spec is not None else []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if str(part))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            bad = str(item["loc"][-1]) if item["loc"] else ""
            hint = did_you_mean(bad, known) if spec is not None else (suggest(item["loc"]) if suggest else "")
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

    def register_callback(self, kind: str, plugin: str) -> Register:
        """The ``register`` function handed to one plugin's ``vltk_register_<kind>s`` hook.

        It takes exactly the arguments of :class:`vltk.hookspecs.Register`. Python would report a wrong keyword
        as a ``TypeError`` raised in the plugin's own frame, with no word of which plugin or component; binding
        the arguments here turns it into a one-line :class:`UserError` that names both and suggests the keyword
        that was meant.
        """

        def register(*args: Any, **kwargs: Any) -> None:
            try:
                bound = _REGISTER_SIGNATURE.bind(*args, **kwargs)
            except TypeError as error:
                raise UserError(_bad_call_message(kind, plugin, args, kwargs, error)) from None
            bound.apply_defaults()
            values = bound.arguments
            self.add(
                ComponentSpec(
                    kind=kind,
                    name=values["name"],
                    factory=values["factory"],
                    options=values["options"] or NoOptions,
                    plugin=plugin,
                    summary=values["summary"],
                    paper=values["paper"],
                )
            )

        register.__signature__ = _REGISTER_SIGNATURE  # type: ignore[attr-defined]
        return register

    def add(self, spec: ComponentSpec) -> None:
        """Record one component; an unnamed one, a non-Options options class or a taken name is a user error."""
        if not spec.name or not isinstance(spec.name, str):
            raise UserError(
                f"plugin '{spec.plugin}' registered {_with_article(spec.kind)} without a name; pass the name users "
                "type as the first argument of register()"
            )
        if not (isinstance(spec.options, type) and issubclass(spec.options, Options)):
            raise UserError(
                f"plugin '{spec.plugin}' registered {spec.kind} '{spec.name}' with options={spec.options!r}; "
                "pass a subclass of vltk.api.Options (or leave options out)"
            )
        existing = self._specs[spec.kind].get(spec.name)
        if existing is not None:
            raise UserError(
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


def _register_reference(
    name: str,
    factory: Callable[..., Any],
    *,
    options: type[Options] | None = None,
    summary: str = "",
    paper: str = "",
) -> None:
    """The argument list of :class:`vltk.hookspecs.Register`, as a function ``inspect`` can bind calls against."""


_REGISTER_SIGNATURE = inspect.signature(_register_reference)


def _bad_call_message(kind: str, plugin: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: TypeError) -> str:
    """One line for a ``register(...)`` call that does not fit the signature: who, what, and the likely fix."""
    name = args[0] if args else kwargs.get("name")
    component = f"{kind} '{name}'" if isinstance(name, str) and name else _with_article(kind)
    accepted = list(_REGISTER_SIGNATURE.parameters)
    unknown = [keyword for keyword in kwargs if keyword not in _REGISTER_SIGNATURE.parameters]
    usage = "register(name, factory, *, options=None, summary='', paper='')"
    if unknown:
        keyword = unknown[0]
        return (
            f"plugin '{plugin}' registered {component} with an unknown keyword '{keyword}';"
            f"{did_you_mean(keyword, accepted)} the signature is {usage}"
        )
    return f"plugin '{plugin}' registered {component} with wrong arguments ({error}); the signature is {usage}"


def _with_article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
