"""Every recipe shipped (core and plugins) resolves: ``vltk train --recipe X --dry-run`` validates all options.

Paper recipes point at data and weights that are not here; the dry run checks everything that does not need them
(names, options, schedules). The tiny synthetic recipes were also trained by hand (see the issue-5 report).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml

from vltk.testing import invoke

REPO = Path(__file__).resolve().parents[2]


def _recipes_on_disk() -> list[str]:
    """Recipe names from the files alone — core ``vltk/recipes`` and each built-in entry point's ``recipes/``
    folder — so collecting this module imports no plugin (one broken plugin must not hide every test here);
    :func:`test_plugins_declare_exactly_the_recipes_on_disk` checks that the plugins agree."""
    names = [path.stem for path in (REPO / "vltk" / "recipes").glob("*.yaml")]
    for entry_point in metadata.entry_points(group="vltk"):
        package = entry_point.value.split(":")[0].rsplit(".", 1)[0]  # vltk_plugins.rein.hooks -> vltk_plugins.rein
        if package.startswith("vltk_plugins."):
            folder = REPO / "plugins" / Path(*package.split(".")) / "recipes"
            names += [f"{entry_point.name}/{path.stem}" for path in folder.glob("*.yaml")]
    return sorted(names)


RECIPES = _recipes_on_disk()

#: Recipes the paper plugins promise (issue 5): the paper settings and a tiny CPU version of each.
EXPECTED = (
    "denseclip/ade20k",
    "denseclip/synthetic",
    "lseg/gta2city",
    "lseg/synthetic",
    "vltseg/gta2city",
    "vltseg/synthetic",
)


def _dry_run(recipe: str, *overrides: str) -> dict:
    result = invoke(["train", "--recipe", recipe, "--dry-run", *overrides])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_plugins_declare_exactly_the_recipes_on_disk() -> None:
    from vltk.config import available_recipes
    from vltk.plugins import get_plugin_manager

    assert sorted(available_recipes(get_plugin_manager().recipe_dirs())) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_resolves_in_a_dry_run(recipe: str) -> None:
    resolved = _dry_run(recipe)
    assert resolved["recipe"] == recipe
    assert resolved["backbone"]["name"] and resolved["decoder"]["name"]
    assert resolved["train"]["iters"] >= 1


@pytest.mark.parametrize("recipe", EXPECTED)
def test_promised_recipes_exist(recipe: str) -> None:
    assert recipe in RECIPES


def test_denseclip_ade20k_follows_the_paper_settings() -> None:
    config = _dry_run("denseclip/ade20k")
    train = config["train"]
    assert config["backbone"] == {**config["backbone"], "name": "clip-resnet", "variant": "RN50"}
    assert config["prompter"]["name"] == "denseclip" and config["adapter"]["name"] == "full"
    assert config["decoder"]["name"] == "fpn" and config["decoder"]["head_channels"] == 256
    # AdamW 1e-4 for the head and prompt learner, x0.1 for the image encoder; the text tower never trains
    assert train["lr"] * train["decoder_lr_mult"] == pytest.approx(1e-4) and train["lr"] == pytest.approx(1e-5)
    assert train["weight_decay"] == pytest.approx(1e-4) and train["poly_power"] == 0.9
    assert (train["warmup_iters"], train["iters"]) == (1500, 80000)
    assert (config["eval"]["mode"], config["eval"]["crop_size"], config["eval"]["stride"]) == ("slide", 512, 341)
    dataset = config["dataset"]
    assert dataset["name"] == "ade20k" and dataset["crop_size"] == 512
    assert dataset["scale"] == [2048, 512] and dataset["ratio_range"] == [0.5, 2.0]


@pytest.mark.parametrize("recipe", ["rein/gta2city", "lseg/gta2city", "vltseg/gta2city"])
def test_gtav_recipes_evaluate_a_capped_source_split(recipe: str) -> None:
    """GTAV has no val split: without a cap every evaluation would run over all ~25k training images."""
    (gtav,) = _dry_run(recipe)["dataset"]["train"]
    assert gtav["kind"] == "gtav" and gtav["max_val_images"] == 500
    assert _dry_run(recipe, "dataset.train.0.max_val_images=null")["dataset"]["train"][0]["max_val_images"] is None


def test_vltseg_gta2city_follows_the_reimplementation_settings() -> None:
    config = _dry_run("vltseg/gta2city")
    train = config["train"]
    assert config["backbone"]["name"] == "eva02" and config["backbone"]["variant"] == "large"
    assert config["adapter"]["name"] == "full" and config["decoder"]["name"] == "mask2former"
    assert config["prompter"] is not None  # text guidance
    assert train["lr"] * train["decoder_lr_mult"] == pytest.approx(1e-4) and train["lr"] == pytest.approx(1e-5)
    assert train["weight_decay"] == pytest.approx(0.05) and train["grad_clip"] == pytest.approx(0.01)
    assert (train["warmup_iters"], train["iters"], train["batch_size"]) == (500, 5000, 16)
    assert (config["eval"]["mode"], config["eval"]["crop_size"], config["eval"]["stride"]) == ("slide", 512, 426)
    assert config["dataset"]["crop_size"] == 512


def test_lseg_recipes_keep_the_decoder_open_vocabulary() -> None:
    for recipe in ("lseg/synthetic", "lseg/gta2city"):
        config = _dry_run(recipe)
        assert config["decoder"]["name"] == "lseg"
        assert config["prompter"]["score_concat_index"] is None  # no K-wide input tied to the training labels


def test_synthetic_recipes_stay_small() -> None:
    for recipe in ("denseclip/synthetic", "lseg/synthetic", "vltseg/synthetic"):
        config = _dry_run(recipe)
        assert config["dataset"]["name"] == "synthetic"
        assert config["train"]["iters"] <= 500 and config["dataset"]["size"] <= 128
