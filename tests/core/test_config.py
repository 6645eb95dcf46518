"""Run configuration: recipes, component flags, dotted overrides, per-component validation, resolution."""

from __future__ import annotations

import pytest
import yaml

from vltk.config import apply_override, build_config, parse_override, resolve, to_yaml
from vltk.errors import UserError
from vltk.plugins import get_plugin_manager


@pytest.fixture
def manager():
    return get_plugin_manager()


def test_default_recipe_resolves_with_all_defaults(manager) -> None:
    config = resolve(build_config(recipe_dirs=manager.recipe_dirs()), manager.get_registry()).config
    assert config.recipe == "default"
    assert config.backbone.name == "eva02" and config.backbone.options()["variant"] == "tiny"
    assert config.decoder.name == "fpn" and "head_channels" in config.decoder.options()
    assert config.dataset.name == "synthetic"
    round_trip = yaml.safe_load(to_yaml(config))
    assert round_trip["adapter"]["name"] == config.adapter.name


def test_plugin_recipe_and_flags_and_overrides(manager) -> None:
    config = build_config(
        "rein/synthetic",
        components={"decoder": "fpn", "adapter": "rein"},
        overrides=["adapter.lora_dim=8", "train.lr=1e-4", "dataset.domains=[synthetic,fog]"],
        recipe_dirs=manager.recipe_dirs(),
    )
    config = resolve(config, manager.get_registry()).config
    assert config.adapter.options()["lora_dim"] == 8
    assert config.adapter.options()["token_length"] == 32  # kept: same adapter name as the recipe
    assert config.train.lr == pytest.approx(1e-4)  # '1e-4' is a string to PyYAML; we coerce it
    assert config.dataset.options()["domains"] == ["synthetic", "fog"]


def test_switching_component_drops_the_old_options(manager) -> None:
    config = build_config("rein/synthetic", components={"adapter": "frozen"}, recipe_dirs=manager.recipe_dirs())
    assert resolve(config, manager.get_registry()).config.adapter.options() == {}


def test_bad_option_key_is_named(manager) -> None:
    config = build_config(
        components={"adapter": "rein"}, overrides=["adapter.lora_dm=8"], recipe_dirs=manager.recipe_dirs()
    )
    with pytest.raises(UserError, match=r"adapter\.lora_dm: unknown option; did you mean 'lora_dim'"):
        resolve(config, manager.get_registry())


def test_bad_top_level_and_train_keys_are_named(manager) -> None:
    with pytest.raises(UserError, match=r"train\.itres"):
        build_config(overrides=["train.itres=3"], recipe_dirs=manager.recipe_dirs())
    with pytest.raises(UserError, match=r"train\.iters.*greater than or equal to 1"):
        build_config(overrides=["train.iters=0"], recipe_dirs=manager.recipe_dirs())
    with pytest.raises(UserError, match="seeed"):
        build_config(overrides=["seeed=3"], recipe_dirs=manager.recipe_dirs())


def test_unknown_recipe_and_component_names_suggest(manager) -> None:
    with pytest.raises(UserError, match="did you mean 'rein/synthetic'"):
        build_config("rein/synthetc", recipe_dirs=manager.recipe_dirs())
    config = build_config(components={"backbone": "eva2"}, recipe_dirs=manager.recipe_dirs())
    with pytest.raises(UserError, match="did you mean 'eva02'"):
        resolve(config, manager.get_registry())


def test_recipe_file_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        build_config(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="mapping"):
        build_config(str(scalar))


def test_override_parsing() -> None:
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("dataset.domains=[a, b]") == (["dataset", "domains"], ["a", "b"])
    assert parse_override("backbone.pretrained=null") == (["backbone", "pretrained"], None)
    assert parse_override("backbone.pretrained=weights.pt") == (["backbone", "pretrained"], "weights.pt")
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_override("train.lr")
    data = {"augmenters": [{"name": "x"}]}
    apply_override(data, ["augmenters", "0", "p"], 0.5)
    assert data["augmenters"][0]["p"] == 0.5
    with pytest.raises(UserError, match="no item 3"):
        apply_override(data, ["augmenters", "3", "p"], 0.5)


def test_configs_are_frozen(manager) -> None:
    config = build_config(recipe_dirs=manager.recipe_dirs())
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        config.seed = 4  # type: ignore[misc]


def test_resolved_options_validate_again_for_every_component(manager) -> None:
    """config.resolved.yaml and checkpoints carry every option with its default; re-reading must accept them."""
    registry = manager.get_registry()
    from vltk.registry import KINDS

    # datasets on disk cannot default their folders: they get the smallest valid options instead
    required = {
        "urban": {"train": [{"name": "gtav", "kind": "gtav", "root": "data/gta"}]},
        "dwd": {"root": "data/dwd"},
        "ade20k": {"root": "data/ade/ADEChallengeData2016"},
    }
    for kind in KINDS:
        for spec in registry.specs(kind):
            dumped = spec.validate(required.get(spec.name, {})).model_dump(mode="json")
            assert spec.validate(dumped).model_dump(mode="json") == dumped, f"{kind} {spec.name}"


@pytest.mark.parametrize("recipe", ["default", "rein/synthetic"])
def test_resolution_is_idempotent(manager, recipe: str) -> None:
    registry = manager.get_registry()
    once = resolve(build_config(recipe, recipe_dirs=manager.recipe_dirs()), registry)
    again = resolve(build_config(base=once.config.to_dict()), registry)
    assert again.config == once.config
    assert [item.options for item in again.components()] == [item.options for item in once.components()]


def test_resolved_run_carries_validated_options_objects(manager) -> None:
    from vltk.resolved import ResolvedRun

    config = build_config("rein/synthetic", overrides=["adapter.lora_dim=8"], recipe_dirs=manager.recipe_dirs())
    run = resolve(config, manager.get_registry())
    assert isinstance(run, ResolvedRun) and resolve(run, manager.get_registry()) is run
    assert run.adapter.name == "rein" and run.adapter.options.lora_dim == 8  # the object factories get
    assert run.adapter.section == "adapter" and run.adapter.spec.plugin == "rein"
    assert run.config.adapter.options()["lora_dim"] == 8  # and the YAML side, every default written back
    with pytest.raises(AttributeError):
        run.adapter = run.decoder  # type: ignore[misc]
    moved = run.with_settings(output="runs/elsewhere", seed=3)
    assert (moved.config.output, moved.config.seed, moved.adapter) == ("runs/elsewhere", 3, run.adapter)
    with pytest.raises(ValueError, match="component sections"):
        run.with_settings(adapter={"name": "frozen"})


def test_sections_a_recipe_leaves_out_come_from_the_default_recipe(manager, tmp_path) -> None:
    recipe = tmp_path / "mini.yaml"
    recipe.write_text("backbone: {name: clip-vit, variant: tiny}\ndecoder: fpn\n")
    config = build_config(str(recipe))
    default = build_config(recipe_dirs=manager.recipe_dirs())
    assert config.adapter == default.adapter and config.dataset == default.dataset
    assert config.backbone.name == "clip-vit"


def test_task_defaults_are_data(manager) -> None:
    detection = build_config(components={"task": "detection"}, recipe_dirs=manager.recipe_dirs())
    assert (detection.dataset.name, detection.prompter.name) == ("synthetic-det", "clip-template")
    named = build_config(
        components={"task": "detection"}, overrides=["dataset=synthetic"], recipe_dirs=manager.recipe_dirs()
    )
    assert named.dataset.name == "synthetic"  # named on the command line: kept
