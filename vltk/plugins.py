"""Plugin manager: loads the ``vltk`` entry-point group once and fills the component registry.

Built-in components are entry points of our own distribution, so they go through exactly the path a
third-party ``vltk-<name>`` package does. Two environment variables control loading:

- ``VLTK_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points at all (tests register plugins by hand);
- ``VLTK_BLOCK_PLUGINS=a,b``: skip the entry points named ``a`` and ``b`` (a name that is no installed entry
  point is a one-line warning with the closest name: a typo must not leave the plugin silently loaded).

``check_pending()`` runs after loading, so a hook implementation with a misspelled name (``vltk_register_adaptor``)
fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from vltk import hookspecs
from vltk.errors import UserError, did_you_mean
from vltk.registry import KINDS, Registry

ENTRY_POINT_GROUP = "vltk"


class PluginLoadError(UserError):
    """A plugin could not be imported or declares hooks vltk does not know. Names the plugin and how to fix it."""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin as ``vltk plugins`` reports it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


class VltkPluginManager:
    """A pluggy manager plus the registry it fills. Use :func:`get_plugin_manager` for the process-wide one."""

    def __init__(self, *, autoload: bool | None = None, blocked: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager("vltk")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self._distributions: dict[str, tuple[str | None, str | None]] = {}
        self._registered = False
        if autoload is None:
            autoload = os.environ.get("VLTK_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() not in {"1", "true", "yes"}
        from_environment = blocked is None
        if blocked is None:
            blocked = {name.strip() for name in os.environ.get("VLTK_BLOCK_PLUGINS", "").split(",") if name.strip()}
        self.blocked: frozenset[str] = frozenset(blocked)
        for name in blocked:
            self.pm.set_blocked(name)
        if autoload:
            self._load_entry_points(warn_unknown_blocked=from_environment)

    def _load_entry_points(self, *, warn_unknown_blocked: bool = False) -> None:
        entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        if warn_unknown_blocked:
            installed = sorted({entry_point.name for entry_point in entry_points})
            for name in sorted(self.blocked - set(installed)):
                warnings.warn(
                    f"VLTK_BLOCK_PLUGINS names '{name}', which is not an installed plugin;"
                    f"{did_you_mean(name, installed)} installed: {', '.join(installed) or 'none'}",
                    UserWarning,
                    stacklevel=2,
                )
        for entry_point in entry_points:
            if self.pm.is_blocked(entry_point.name) or self.pm.has_plugin(entry_point.name):
                continue
            try:
                module = entry_point.load()
            except Exception as error:  # any import failure in third-party code must name the plugin
                raise PluginLoadError(
                    f"plugin '{entry_point.name}' ({entry_point.value}) failed to import: "
                    f"{type(error).__name__}: {error}. Fix or uninstall it, or skip it with "
                    f"VLTK_BLOCK_PLUGINS={entry_point.name}"
                ) from error
            dist = entry_point.dist
            self.add_plugin(
                module,
                entry_point.name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
            )

    def add_plugin(
        self, plugin: Any, name: str, *, distribution: str | None = None, version: str | None = None
    ) -> None:
        """Register a plugin object or module by hand (tests, notebooks) and validate its hook names."""
        if self._registered:
            raise RuntimeError("plugins must be added before the registry is first used")
        if self.pm.is_blocked(name):
            return
        try:
            hash(plugin)  # pluggy keeps plugins in sets to call one plugin's hooks (see _callers_by_plugin)
        except TypeError:
            raise PluginLoadError(
                f"plugin '{name}' is a {type(plugin).__name__}, which cannot be hashed; register a module or an "
                "instance of a plain class"
            ) from None
        self.pm.register(plugin, name=name)
        self._distributions[name] = (distribution, version)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            self.pm.unregister(name=name)
            known = [spec for spec in dir(hookspecs) if spec.startswith("vltk_")]
            raise PluginLoadError(
                f"plugin '{name}' is invalid: {error}. Hook implementations must be named one of: {', '.join(known)}"
            ) from None

    def _callers_by_plugin(self, hook_name: str) -> list[tuple[str, Any]]:
        """``(plugin name, hook caller)`` for every plugin implementing ``hook_name``, in registration order.

        Each caller goes through pluggy's call path (tracing, call monitoring, wrappers) but reaches only one
        plugin's implementation, so whatever it registers or returns is credited to that plugin — which is what
        lets a duplicate name say which two plugins collide.
        """
        hook = getattr(self.pm.hook, hook_name)
        implementations = [impl for impl in hook.get_hookimpls() if not (impl.hookwrapper or impl.wrapper)]
        callers = []
        for impl in implementations:
            others = [other.plugin for other in implementations if other.plugin is not impl.plugin]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            # pluggy removes a plugin by its attribute named like the hook; one implementing it under another
            # function name (``specname=``) would be called once per plugin and register everything repeatedly
            stray = [
                other.plugin_name
                for other in caller.get_hookimpls()
                if other.plugin is not impl.plugin and not (other.hookwrapper or other.wrapper)
            ]
            if stray:
                raise PluginLoadError(
                    f"plugin '{stray[0]}' implements {hook_name} under another function name; name the function "
                    f"{hook_name} (vltk calls each plugin's implementation on its own)"
                )
            callers.append((impl.plugin_name, caller))
        return callers

    def _fill_registry(self) -> None:
        if self._registered:
            return
        self._registered = True
        for kind in KINDS:
            for plugin_name, caller in self._callers_by_plugin(f"vltk_register_{kind}s"):
                caller(register=self.registry.register_callback(kind, plugin_name))

    def get_registry(self) -> Registry:
        """The registry, filled on first use (hook modules stay light, so this is cheap)."""
        self._fill_registry()
        return self.registry

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin with its distribution, version and implemented hooks."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            distribution, version = self._distributions.get(name, (None, None))
            infos.append(
                PluginInfo(
                    name=name,
                    module=getattr(plugin, "__name__", type(plugin).__name__),
                    distribution=distribution,
                    version=version,
                    hooks=hooks,
                )
            )
        return sorted(infos, key=lambda info: info.name)

    def recipe_dirs(self) -> list[tuple[str, str]]:
        """``(plugin name, folder)`` pairs from every ``vltk_recipe_dirs`` implementation."""
        pairs = []
        for plugin_name, caller in self._callers_by_plugin("vltk_recipe_dirs"):
            for folders in caller():
                pairs.extend((plugin_name, str(folder)) for folder in folders or [])
        return pairs

    def register_commands(self, cli: Any) -> None:
        self.pm.hook.vltk_register_commands(cli=cli)

    def bench_cases(self) -> dict[str, tuple[str, Any]]:
        """``{case name: (plugin name, case)}`` for every case registered through ``vltk_register_bench_cases``.

        A name taken twice is a :class:`UserError` naming both plugins. Only the case's ``name`` is read here
        (the core does not import ``vltk_kernels``); ``vltk bench`` checks that each case is a ``BenchCase``.
        """
        cases: dict[str, tuple[str, Any]] = {}

        def register(case: Any, *, plugin: str) -> None:
            name = getattr(case, "name", None)
            if not isinstance(name, str) or not name:
                raise UserError(
                    f"plugin '{plugin}' registered a bench case without a name: {case!r}; register a "
                    "vltk_kernels.benchmarking.BenchCase"
                )
            if name in cases:
                raise UserError(
                    f"bench case '{name}' is registered twice: by '{cases[name][0]}' and by '{plugin}'; rename one, "
                    "or skip a plugin with VLTK_BLOCK_PLUGINS"
                )
            cases[name] = (plugin, case)

        for plugin, call in self._callers_by_plugin("vltk_register_bench_cases"):
            call(register=functools.partial(register, plugin=plugin))
        return cases

    def release_formats(self) -> dict[str, tuple[str, Any]]:
        """``{format name: (plugin name, format)}`` of every ``vltk_release_formats`` implementation, in plugin
        order. A name given twice is a :class:`UserError` naming both plugins; a format without a ``name``,
        ``title`` or ``convert`` is a :class:`PluginLoadError` naming its plugin."""
        formats: dict[str, tuple[str, Any]] = {}
        for plugin, call in self._callers_by_plugin("vltk_release_formats"):
            for release_format in (item for result in call() for item in result or []):
                name = getattr(release_format, "name", None)
                if not isinstance(name, str) or not name or not callable(getattr(release_format, "convert", None)):
                    raise PluginLoadError(
                        f"plugin '{plugin}': vltk_release_formats returned {release_format!r}, which has no name or "
                        "no convert(path, hints); return objects with name, title and convert"
                    )
                if name in formats:
                    raise UserError(
                        f"release format '{name}' is declared twice: by '{formats[name][0]}' and by '{plugin}'; "
                        "rename one, or skip a plugin with VLTK_BLOCK_PLUGINS"
                    )
                formats[name] = (plugin, release_format)
        return formats

    def builtin_weights(self) -> dict[str, tuple[str, Any]]:
        """``{weights name: (plugin name, BuiltinWeights)}`` of every ``vltk_builtin_weights`` implementation. A
        name given twice is a :class:`UserError` naming both plugins; anything without ``name``, ``path`` and
        ``sha256`` is a :class:`PluginLoadError` naming its plugin."""
        weights: dict[str, tuple[str, Any]] = {}
        for plugin, call in self._callers_by_plugin("vltk_builtin_weights"):
            for item in (item for result in call() for item in result or []):
                name = getattr(item, "name", None)
                if (
                    not isinstance(name, str)
                    or not name
                    or not getattr(item, "sha256", None)
                    or not hasattr(item, "path")
                ):
                    raise PluginLoadError(
                        f"plugin '{plugin}': vltk_builtin_weights returned {item!r}, which is not a BuiltinWeights "
                        "(name, path, sha256, backbones); return vltk.api.BuiltinWeights objects"
                    )
                if name in weights:
                    raise UserError(
                        f"built-in weights '{name}' are declared twice: by '{weights[name][0]}' and by '{plugin}'; "
                        "rename one, or skip a plugin with VLTK_BLOCK_PLUGINS"
                    )
                weights[name] = (plugin, item)
        return weights

    def user_error_types(self) -> tuple[type[BaseException], ...]:
        """Every exception type plugins declare through ``vltk_user_error_types``: the CLI prints them as one
        ``Error:`` line, like :class:`UserError`. Anything but exception classes is a :class:`PluginLoadError`."""
        types: list[type[BaseException]] = []
        for plugin, call in self._callers_by_plugin("vltk_user_error_types"):
            for error_type in (error_type for result in call() for error_type in result or []):
                if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
                    raise PluginLoadError(
                        f"plugin '{plugin}': vltk_user_error_types returned {error_type!r}, which is not an "
                        "exception type; return a list of exception classes"
                    )
                types.append(error_type)
        return tuple(types)


_MANAGER: VltkPluginManager | None = None


def get_plugin_manager() -> VltkPluginManager:
    """The process-wide plugin manager; entry points are loaded on the first call only."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = VltkPluginManager()
    return _MANAGER


def current_plugin_manager() -> VltkPluginManager | None:
    """The process-wide manager if one was made, else ``None``; unlike :func:`get_plugin_manager` it never loads
    plugins, so a fixture can save the exact state it must restore."""
    return _MANAGER


def reset_plugin_manager(manager: VltkPluginManager | None = None) -> None:
    """Replace (or drop) the process-wide manager: for tests and for plugin authors' fixtures."""
    global _MANAGER
    _MANAGER = manager


def get_registry() -> Registry:
    return get_plugin_manager().get_registry()
