"""Shipped weights by name (``backbone.pretrained=builtin:<name>``): a package declares a file with its sha256
through ``vltk_builtin_weights``; the backbone loads exactly that file (fp16 safetensors into fp32 weights), names
that do not exist, weights for another backbone or variant and damaged files are one clear error each, ``vltk list
weights`` / ``vltk show backbone`` list them, and a frozen-backbone checkpoint records the name, not a path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from vltk.api import BuiltinWeights, hookimpl, is_builtin, resolve_weights_file
from vltk.builtin_weights import resolve_builtin
from vltk.engine.fingerprint import backbone_record
from vltk.errors import UserError
from vltk.testing import invoke, isolated_plugin_manager
from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit, build_eva02
from vltk_plugins.backbones.ship import build_backbone, check_embedding, ship_weights
from vltk_plugins.backbones.shipped import SHIPPED_DIR, read_record, shipped_weights, write_record


class Shipper:
    """A package that ships weights: declares ``items`` through the hook."""

    def __init__(self, items: list[BuiltinWeights]) -> None:
        self.items = items

    @hookimpl
    def vltk_builtin_weights(self) -> list[BuiltinWeights]:
        return self.items


def _quiet(build: Any, options: dict[str, Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(options).eval()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, BuiltinWeights]:
    """A tiny EVA02 and its fp16 safetensors file, declared as ``tiny-test`` by a record written by the tool."""
    folder = tmp_path_factory.mktemp("shipped")
    torch.manual_seed(3)
    source = _quiet(build_eva02, {"variant": "tiny"})
    path = folder / "tiny-test.safetensors"
    save_file({key: value.detach().half().contiguous() for key, value in source.state_dict().items()}, str(path))
    record = write_record(
        path,
        name="tiny-test",
        backbones=("eva02",),
        variant="tiny",
        summary="a test file",
        reproduce="vltk pretrain --output runs/x",
        evaluation={"R@1": 12.5, "zero_shot": {"fog": {"r1": 0.5}}},
    )
    return source, read_record(record)


def test_record_round_trip_holds_the_files_sha256(shipped: tuple[Any, BuiltinWeights]) -> None:
    _, weights = shipped
    record = json.loads((weights.path.parent / "tiny-test.json").read_text())
    assert record["file"] == "tiny-test.safetensors" and len(record["sha256"]) == 64
    assert weights.reference == "builtin:tiny-test" and weights.evaluation == {
        "R@1": 12.5,
        "zero_shot": {"fog": {"r1": 0.5}},
    }
    assert shipped_weights(weights.path.parent) == [weights]


def test_builtin_reference_loads_the_shipped_tensors(shipped: tuple[Any, BuiltinWeights]) -> None:
    source, weights = shipped
    with isolated_plugin_manager(extra={"shipper": Shipper([weights])}):
        torch.manual_seed(9)
        loaded = _quiet(build_eva02, {"variant": "tiny", "pretrained": "builtin:tiny-test"})
    for (name, expected), (other, found) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == other and found.dtype == expected.dtype  # fp16 on disk, fp32 in the model
        assert torch.equal(found, expected.half().to(expected.dtype)), name


def test_unknown_name_wrong_backbone_and_variant_are_one_error_each(shipped: tuple[Any, BuiltinWeights]) -> None:
    _, weights = shipped
    with isolated_plugin_manager(extra={"shipper": Shipper([weights])}):
        with pytest.raises(UserError, match=r"unknown built-in weights 'builtin:tiny-tset'; did you mean 'tiny-test'"):
            _quiet(build_eva02, {"variant": "tiny", "pretrained": "builtin:tiny-tset"})
        with pytest.raises(UserError, match=r"'tiny-test' are for the eva02 backbone, not 'clip-vit'"):
            _quiet(build_clip_vit, {"variant": "tiny", "pretrained": "builtin:tiny-test"})
        with pytest.raises(UserError, match=r"for variant 'tiny', not 'small'; set backbone.variant=tiny"):
            resolve_builtin("builtin:tiny-test", backbone="eva02", variant="small")


def test_a_damaged_or_missing_file_is_refused(shipped: tuple[Any, BuiltinWeights], tmp_path: Path) -> None:
    _, weights = shipped
    copy = tmp_path / "copy.safetensors"
    data = bytearray(weights.path.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    damaged = BuiltinWeights("damaged", copy, weights.sha256, ("eva02",), variant="tiny")
    gone = BuiltinWeights("gone", tmp_path / "gone.safetensors", weights.sha256, ("eva02",))
    with isolated_plugin_manager(extra={"shipper": Shipper([damaged, gone])}):
        with pytest.raises(UserError, match=r"'damaged' .* are damaged or were replaced: sha256"):
            resolve_builtin("builtin:damaged", backbone="eva02", variant="tiny")
        with pytest.raises(UserError, match=r"'gone' are declared but their file .* is missing; reinstall"):
            resolve_builtin("builtin:gone")


def test_a_name_declared_twice_names_both_plugins(shipped: tuple[Any, BuiltinWeights]) -> None:
    _, weights = shipped
    with isolated_plugin_manager(autoload=False, extra={"one": Shipper([weights]), "two": Shipper([weights])}):
        with pytest.raises(UserError, match=r"'tiny-test' are declared twice: by 'one' and by 'two'"):
            resolve_builtin("builtin:tiny-test")


def test_list_and_show_print_the_shipped_weights(shipped: tuple[Any, BuiltinWeights]) -> None:
    _, weights = shipped
    with isolated_plugin_manager(extra={"shipper": Shipper([weights])}):
        listed = invoke(["list", "weights", "--json"])
        shown = invoke(["show", "backbone", "eva02"])
        shown_json = invoke(["show", "backbone", "eva02", "--json"])
        other = invoke(["show", "backbone", "clip-vit"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["tiny-test"]["sha256"] == weights.sha256
    assert "builtin:tiny-test" in shown.output and "reproduce: vltk pretrain --output runs/x" in shown.output
    assert "evaluation: R@1 12.5" in shown.output and "evaluation.zero_shot.fog: r1 0.5" in shown.output
    references = [item["reference"] for item in json.loads(shown_json.output)["builtin_weights"]]
    assert "builtin:tiny-test" in references  # beside whatever the installed plugins ship
    assert "builtin:tiny-test" not in other.output and "none installed for this backbone" in other.output


def test_a_frozen_backbone_checkpoint_records_the_name_not_a_path(shipped: tuple[Any, BuiltinWeights]) -> None:
    source, _ = shipped
    model = torch.nn.Module()
    model.backbone = source
    record = backbone_record(model, {"name": "eva02", "variant": "tiny", "pretrained": "builtin:tiny-test"})
    assert record["source"] == "builtin:tiny-test"


@pytest.mark.parametrize("weights", shipped_weights(), ids=lambda weights: weights.name)
def test_every_shipped_file_matches_its_record(weights: BuiltinWeights) -> None:
    """The files in the package (``vltk_plugins/backbones/builtin``) are the ones their records describe."""
    assert weights.path.parent == SHIPPED_DIR
    resolve_builtin(weights.reference)  # raises on a missing or changed file


@pytest.mark.parametrize("weights", shipped_weights(), ids=lambda weights: weights.name)
def test_every_shipped_file_gives_its_recorded_embedding(weights: BuiltinWeights) -> None:
    """The fixed scene's embedding from the installed file equals the one recorded when it was shipped."""
    record = json.loads((SHIPPED_DIR / f"{weights.name}.json").read_text())
    model = build_backbone(weights.backbones[0], weights.variant, weights.reference)
    assert check_embedding(model) == pytest.approx(record["check"]["values"], abs=1e-4)


#: The recipes that start from the shipped foundation (the default and every eva02 ``*/synthetic`` one).
FOUNDATION_RECIPES = (
    "default",
    "rein/synthetic",
    "lseg/synthetic",
    "vltseg/synthetic",
    "denseclip/synthetic",
    "clip-gap/synthetic",
)


@pytest.mark.parametrize("recipe", FOUNDATION_RECIPES)
def test_the_default_and_synthetic_recipes_start_from_the_shipped_foundation(recipe: str) -> None:
    """`vltk train` (and the papers' miniatures) load the shipped file, with no random-weights warning."""
    from vltk.config import build_config, resolve
    from vltk.errors import RandomWeightsWarning
    from vltk.pipeline import build_model
    from vltk.plugins import get_plugin_manager

    manager = get_plugin_manager()
    run = resolve(build_config(recipe, recipe_dirs=manager.recipe_dirs()), manager.get_registry())
    reference = run.config.backbone.options()["pretrained"]
    assert is_builtin(reference) and reference in {weights.reference for weights in shipped_weights()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        model = build_model(run)
    shipped_file = load_file(resolve_weights_file(reference))
    state = model.backbone.state_dict()
    key = next(name for name in shipped_file if name.endswith(("patch_embed.proj.weight", "visual.conv1.weight")))
    assert torch.equal(state[key], shipped_file[key].float())


def test_ship_writes_fp16_safetensors_a_record_and_a_reproducible_check(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = _quiet(build_eva02, {"variant": "tiny"})
    torch.save(source.state_dict(), tmp_path / "open_clip.pt")
    record_path = ship_weights(
        str(tmp_path / "open_clip.pt"),
        name="shipped-test",
        backbone="eva02",
        variant="tiny",
        reproduce="vltk pretrain",
        evaluation={"R@1": 1.0},
        folder=tmp_path / "out",
    )
    record = json.loads(record_path.read_text())
    weights = read_record(record_path)
    assert weights.path.suffix == ".safetensors" and record["check"]["dims"] == 16
    with isolated_plugin_manager(extra={"shipper": Shipper([weights])}):
        loaded = build_backbone("eva02", "tiny", "builtin:shipped-test")
    assert check_embedding(loaded) == pytest.approx(record["check"]["values"], abs=1e-6)
    assert check_embedding(source) == pytest.approx(record["check"]["values"], abs=2e-2)  # fp16 rounding only
    assert check_embedding(source) != check_embedding(_quiet(build_eva02, {"variant": "tiny"}))


def test_ship_refuses_a_file_over_the_budget_and_leaves_nothing(tmp_path: Path) -> None:
    torch.manual_seed(5)
    torch.save(_quiet(build_eva02, {"variant": "tiny"}).state_dict(), tmp_path / "open_clip.pt")
    with pytest.raises(UserError, match=r"MB in fp16, over the 1 MB shipping budget"):
        ship_weights(
            str(tmp_path / "open_clip.pt"),
            name="big",
            backbone="eva02",
            variant="tiny",
            folder=tmp_path / "out",
            max_bytes=2**20,
        )
    assert list((tmp_path / "out").iterdir()) == []
