"""Plugin manager and registry: entry-point loading, blocking, duplicate names, misspelled hooks, lookups."""

from __future__ import annotations

import types

import pytest
from pydantic import Field

from vltk import hookimpl
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.options import Options
from vltk.plugins import PluginLoadError, VltkPluginManager
from vltk.registry import normalise_kind


class _Opts(Options):
    rank: int = Field(4, description="a knob")


def _module(**hooks: object) -> types.ModuleType:
    """A plugin object as an entry point would load it: a module holding hook implementations."""
    module = types.ModuleType("hand_made_plugin")
    module.__dict__.update(hooks)
    return module


def _plugin(name: str, adapter: str = "demo") -> types.ModuleType:
    @hookimpl
    def vltk_register_adapters(register):
        register(adapter, lambda options, context: ("built", options, context), options=_Opts, summary=name)

    return _module(vltk_register_adapters=vltk_register_adapters)


def test_builtin_entry_points_are_loaded() -> None:
    registry = VltkPluginManager(autoload=True, blocked=set()).get_registry()
    assert {"frozen", "full", "rein"} <= set(registry.names("adapters"))
    assert {"eva02", "clip-vit"} <= set(registry.names("backbone"))
    assert "fpn" in registry.names("decoder")
    assert "synthetic" in registry.names("dataset")
    assert registry.get("adapter", "rein").plugin == "rein"


def test_block_list_skips_a_plugin() -> None:
    registry = VltkPluginManager(autoload=True, blocked={"rein"}).get_registry()
    assert "rein" not in registry.names("adapter")
    assert "frozen" in registry.names("adapter")


def test_env_variables_control_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLTK_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert VltkPluginManager().get_registry().names("adapter") == []
    monkeypatch.delenv("VLTK_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("VLTK_BLOCK_PLUGINS", "rein, adapters")
    assert VltkPluginManager().get_registry().names("adapter") == []


def test_duplicate_names_name_both_plugins() -> None:
    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_plugin("one"), "first-plugin")
    manager.add_plugin(_plugin("two"), "second-plugin")
    with pytest.raises(UserError, match="first-plugin.*second-plugin.*VLTK_BLOCK_PLUGINS=second-plugin") as caught:
        manager.get_registry()
    assert "\n" not in str(caught.value)


def _build(options, **context):
    return None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda register: register("demo", _build, sumary="typo"),
            r"plugin 'typo-plugin' registered adapter 'demo' with an unknown keyword 'sumary'; did you mean 'summary'",
        ),
        (lambda register: register("demo", _build, option=_Opts), r"keyword 'option'; did you mean 'options'"),
        (lambda register: register("demo", _build, _Opts), r"adapter 'demo' with wrong arguments \(too many"),
        (lambda register: register(), r"plugin 'typo-plugin' registered an adapter with wrong arguments"),
    ],
)
def test_register_rejects_arguments_outside_its_signature(call, message: str) -> None:
    @hookimpl
    def vltk_register_adapters(register):
        call(register)

    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_module(vltk_register_adapters=vltk_register_adapters), "typo-plugin")
    with pytest.raises(UserError, match=message):
        manager.get_registry()


def test_register_callback_has_the_signature_of_the_register_protocol() -> None:
    import inspect

    from vltk.hookspecs import Register
    from vltk.registry import Registry

    callback = Registry().register_callback("adapter", "p")
    expected = inspect.signature(Register.__call__).parameters
    assert list(inspect.signature(callback).parameters) == [name for name in expected if name != "self"]


def test_hooks_run_through_pluggys_call_path_one_plugin_at_a_time() -> None:
    """Tracing and call monitoring see every registration hook, and each call reaches exactly one plugin."""
    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_plugin("one", adapter="a"), "first-plugin")
    manager.add_plugin(_plugin("two", adapter="b"), "second-plugin")

    @hookimpl
    def vltk_recipe_dirs():
        return ["/recipes/of/third"]

    manager.add_plugin(_module(vltk_recipe_dirs=vltk_recipe_dirs), "third-plugin")
    calls: list[tuple[str, list[str]]] = []
    manager.pm.add_hookcall_monitoring(
        lambda hook_name, impls, kwargs: calls.append((hook_name, [impl.plugin_name for impl in impls])),
        lambda outcome, hook_name, impls, kwargs: None,
    )
    registry = manager.get_registry()
    assert [(spec.name, spec.plugin) for spec in registry.specs("adapter")] == [
        ("a", "first-plugin"),
        ("b", "second-plugin"),
    ]
    assert manager.recipe_dirs() == [("third-plugin", "/recipes/of/third")]
    assert calls == [
        ("vltk_register_adapters", ["first-plugin"]),
        ("vltk_register_adapters", ["second-plugin"]),
        ("vltk_recipe_dirs", ["third-plugin"]),
    ]


def test_a_hook_under_another_function_name_is_rejected_not_called_twice() -> None:
    @hookimpl(specname="vltk_register_adapters")
    def adapters(register):
        register("c", lambda options, **context: None)

    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_plugin("one", adapter="a"), "first-plugin")
    manager.add_plugin(_module(adapters=adapters), "aliased-plugin")
    with pytest.raises(PluginLoadError, match="plugin 'aliased-plugin' implements vltk_register_adapters under"):
        manager.get_registry()


def test_an_unhashable_plugin_object_is_rejected_with_its_name() -> None:
    manager = VltkPluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="plugin 'ns' is a SimpleNamespace, which cannot be hashed"):
        manager.add_plugin(types.SimpleNamespace(), "ns")


def test_a_misspelled_blocked_name_warns_with_the_closest_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLTK_BLOCK_PLUGINS", "reinn")
    with pytest.warns(UserWarning, match="VLTK_BLOCK_PLUGINS names 'reinn'.*did you mean 'rein'"):
        registry = VltkPluginManager().get_registry()
    assert "rein" in registry.names("adapter")  # the typo blocked nothing


def test_misspelled_hook_fails_loading_with_a_clear_message() -> None:
    @hookimpl
    def vltk_register_adaptors(register):  # typo: adaptors
        pass

    manager = VltkPluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="vltk_register_adaptors.*vltk_register_adapters"):
        manager.add_plugin(_module(vltk_register_adaptors=vltk_register_adaptors), "typo-plugin")


def test_lookup_suggests_the_closest_name_and_builds_with_validated_options() -> None:
    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_plugin("one", adapter="rein"), "p")
    registry = manager.get_registry()
    with pytest.raises(UserError, match="did you mean 'rein'"):
        registry.get("adapter", "reins")
    spec = registry.get("adapter", "rein")
    built, options, context = spec.build(spec.validate({"rank": "8"}), BuildContext(embed_dim=3))
    assert built == "built" and options.rank == 8 and context.embed_dim == 3
    with pytest.raises(TypeError, match="validated"):
        spec.build({"rank": 8})  # the registry never validates a second time: build takes the options object
    with pytest.raises(UserError, match=r"adapter\.rnak: unknown option; did you mean 'rank'"):
        registry.get("adapter", "rein").validate({"rnak": 8})


def test_kind_names_accept_plurals_and_reject_typos() -> None:
    assert normalise_kind("adapters") == "adapter"
    with pytest.raises(UserError, match="did you mean 'decoder'"):
        normalise_kind("decoderz")


def test_registering_a_non_options_class_is_rejected() -> None:
    @hookimpl
    def vltk_register_decoders(register):
        register("bad", lambda o, **c: None, options=dict)

    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(_module(vltk_register_decoders=vltk_register_decoders), "bad-plugin")
    with pytest.raises(UserError, match="plugin 'bad-plugin' registered decoder 'bad' with options=<class 'dict'>"):
        manager.get_registry()


def test_python_api_create_validates_options() -> None:
    import vltk

    adapters = vltk.list_components("adapter")
    assert "rein" in adapters
    rein = vltk.create(
        "adapter", "rein", embed_dim=64, num_layers=2, patch_size=16, lora_dim=4, token_length=10, query_dims=32
    )
    assert rein.queries().shape == (10, 32)
    with pytest.raises(UserError, match="lora_dim"):
        vltk.create("adapter", "rein", embed_dim=64, num_layers=2, patch_size=16, lora_dim="many")
