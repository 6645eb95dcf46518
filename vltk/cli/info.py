"""``vltk list``, ``vltk show`` and ``vltk plugins``: what is installed, what it accepts, who provides it."""

from __future__ import annotations

import json
from typing import Any

import click

from vltk.registry import KINDS, normalise_kind


def escape(text: str) -> str:
    """Descriptions are plain text: ``[a, b]`` must print as written, not be read as rich markup and dropped."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


LIST_EPILOG = """\b
Examples:
  vltk list               # every kind
  vltk list adapters      # one kind (singular or plural)
  vltk list recipes       # shipped recipes
  vltk list weights       # shipped weights (backbone.pretrained=builtin:NAME)
  vltk list --json
"""


def _registry() -> Any:
    from vltk.plugins import get_registry

    return get_registry()


def _how_to_get_plugins() -> str:
    """What to do when nothing (of a kind) is registered: install a plugin, or undo what switched plugins off."""
    from vltk.plugins import get_plugin_manager

    blocked = sorted(get_plugin_manager().blocked)
    if blocked:
        return f"install a plugin or unset VLTK_BLOCK_PLUGINS (it blocks {', '.join(blocked)})"
    return "install a plugin, or unset VLTK_DISABLE_PLUGIN_AUTOLOAD if it is set"


@click.command("list", epilog=LIST_EPILOG)
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_command(kind: str | None, as_json: bool) -> None:
    """List registered components (backbones, adapters, prompters, decoders, augmenters, datasets, loggers),
    recipes or shipped weights."""
    from rich.console import Console
    from rich.table import Table

    if kind in ("weight", "weights"):
        _list_weights(as_json)
        return
    if kind in ("recipe", "recipes"):
        from vltk.config import available_recipes, recipe_description
        from vltk.plugins import get_plugin_manager

        recipes = available_recipes(get_plugin_manager().recipe_dirs())
        if as_json:
            payload = {
                name: {"file": str(path), "description": recipe_description(path)} for name, path in recipes.items()
            }
            click.echo(json.dumps(payload, indent=2))
            return
        table = Table(title="recipes (`vltk show recipe NAME` prints one)")
        for column in ("name", "description", "file"):
            table.add_column(column)
        for name, path in recipes.items():
            table.add_row(escape(name), escape(recipe_description(path)), escape(str(path)))
        Console(width=max(120, Console().width)).print(table)
        return
    registry = _registry()
    kinds = [normalise_kind(kind)] if kind else list(KINDS)
    if as_json:
        payload = {
            k: [{"name": s.name, "plugin": s.plugin, "summary": s.summary, "paper": s.paper} for s in registry.specs(k)]
            for k in kinds
        }
        click.echo(json.dumps(payload, indent=2))
        return
    empty = [k for k in kinds if not registry.specs(k)]
    if empty == kinds:
        click.echo(f"no {', '.join(f'{k}s' for k in kinds)} registered: {_how_to_get_plugins()}")
        return
    table = Table(title="vltk components")
    for column in ("kind", "name", "plugin", "summary"):
        table.add_column(column)
    for k in kinds:
        specs = registry.specs(k)
        if not specs:
            table.add_row(k, "-", "", "(none registered)")
        for spec in specs:
            table.add_row(k, escape(spec.name), escape(spec.plugin), escape(spec.summary))
    Console(width=max(120, Console().width)).print(table)


def _weights_payload(weights: Any) -> dict[str, Any]:
    return {
        "name": weights.name,
        "reference": weights.reference,
        "backbones": list(weights.backbones),
        "variant": weights.variant,
        "summary": weights.summary,
        "file": str(weights.path),
        "sha256": weights.sha256,
        "reproduce": weights.reproduce,
        "evaluation": dict(weights.evaluation),
    }


def _weights_table(title: str, shipped: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("backbone.pretrained=", "fits", "summary", "sha256"):
        table.add_column(column)
    for weights in shipped:
        fits = " / ".join(weights.backbones) + (f" (variant {weights.variant})" if weights.variant else "")
        table.add_row(escape(weights.reference), escape(fits), escape(weights.summary), weights.sha256[:12] + "…")
    return table


def _list_weights(as_json: bool) -> None:
    """``vltk list weights``: the weights installed packages ship (``vltk_builtin_weights``)."""
    from rich.console import Console

    from vltk.builtin_weights import builtin_weights

    shipped = list(builtin_weights().values())
    if as_json:
        click.echo(json.dumps({weights.name: _weights_payload(weights) for weights in shipped}, indent=2))
        return
    if not shipped:
        click.echo(f"no built-in weights are installed: {_how_to_get_plugins()}")
        return
    console = Console(width=max(120, Console().width))
    console.print(_weights_table("shipped weights (`vltk show backbone NAME` says how each was made)", shipped))


SHOW_EPILOG = """\b
Examples:
  vltk show adapter rein
  vltk show backbone eva02
  vltk show recipe rein/synthetic     # a recipe's description and YAML
"""


@click.command("show", epilog=SHOW_EPILOG)
@click.argument("kind")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show_command(kind: str, name: str, as_json: bool) -> None:
    """Show one component (its options: type, default, description; paper and plugin) or one recipe."""
    from rich.console import Console

    if kind in ("recipe", "recipes"):
        _show_recipe(name, as_json)
        return
    spec = _registry().get(kind, name)
    options = _fields(spec.options)
    nested = _nested_models(spec.options)
    if as_json:
        payload = {
            "kind": spec.kind,
            "name": spec.name,
            "plugin": spec.plugin,
            "summary": spec.summary,
            "paper": spec.paper,
            "options": options,
            "nested": {model.__name__: _fields(model) for model in nested},
        }
        if spec.kind == "backbone":
            payload["builtin_weights"] = [_weights_payload(weights) for weights in _shipped_for(spec.name)]
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    console = Console(width=max(120, Console().width))
    console.print(f"[bold]{spec.kind} {escape(spec.name)}[/bold]  (plugin: {escape(spec.plugin)})")
    if spec.summary:
        console.print(escape(spec.summary))
    if spec.paper:
        console.print(f"paper: {escape(spec.paper)}")
    if not options:
        console.print("no options")
        return
    where = f"{spec.kind}s.<i>" if spec.kind in ("augmenter", "logger") else spec.kind  # list sections
    console.print(_options_table(f"options (set with --{spec.kind} NAME and {where}.<option>=VALUE)", options))
    for model in nested:
        users = [option["name"] for option in options if model.__name__ in option["type"]]
        title = f"{model.__name__}: the fields of each item of {', '.join(users) or 'the options above'}"
        console.print(_options_table(title, _fields(model)))
    if spec.kind == "backbone":
        _print_shipped(console, spec.name)


def _shipped_for(backbone: str) -> list[Any]:
    from vltk.builtin_weights import weights_for_backbone

    return weights_for_backbone(backbone)


def _print_shipped(console: Any, backbone: str) -> None:
    """The shipped weights a backbone loads, with how each was made and what it scores."""
    shipped = _shipped_for(backbone)
    if not shipped:
        console.print("built-in weights: none installed for this backbone (backbone.pretrained=FILE loads a file)")
        return
    console.print(_weights_table("built-in weights", shipped))
    for weights in shipped:
        if weights.reproduce:
            console.print(f"{escape(weights.reference)} reproduce: {escape(weights.reproduce)}")
        for label, numbers in _evaluation_lines(weights.evaluation):
            console.print(f"{escape(weights.reference)} {escape(label)}: {escape(numbers)}")


def _evaluation_lines(evaluation: Any, label: str = "evaluation") -> list[tuple[str, str]]:
    """A record's evaluation as readable lines: its plain numbers on one line, each nested table (per-domain
    scores) on its own, labelled by its dotted path, instead of one line of nested dicts."""
    if not isinstance(evaluation, dict) or not evaluation:
        return []
    plain = [f"{key} {value}" for key, value in evaluation.items() if not isinstance(value, dict)]
    lines = [(label, ", ".join(plain))] if plain else []
    for key, value in evaluation.items():
        if isinstance(value, dict):
            lines += _evaluation_lines(value, f"{label}.{key}")
    return lines


def _fields(model: Any) -> list[dict[str, Any]]:
    """Name, readable type, default (``required`` when there is none) and description of a pydantic model's fields."""
    fields = []
    for field_name, field in model.model_fields.items():
        required = field.is_required()
        fields.append(
            {
                "name": field_name,
                "type": _type_name(field.annotation),
                "required": required,
                "default": None if required else field.get_default(call_default_factory=True),
                "description": field.description or "",
            }
        )
    return fields


def _options_table(title: str, fields: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("option", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for field in fields:
        default = "required" if field["required"] else repr(field["default"])
        table.add_row(*(escape(str(value)) for value in (field["name"], field["type"], default, field["description"])))
    return table


def _nested_models(model: Any) -> list[Any]:
    """Pydantic models inside the field types of ``model`` (``list[UrbanDomain]``), so their fields are shown too."""
    import typing

    from pydantic import BaseModel

    found: list[Any] = []

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                for field in annotation.model_fields.values():
                    walk(field.annotation)
            return
        for argument in typing.get_args(annotation):
            walk(argument)

    for field in model.model_fields.values():
        walk(field.annotation)
    return found


def _type_name(annotation: Any) -> str:
    """``list[UrbanDomain]``, ``int | None``: the type as a user reads it, without module paths."""
    import re

    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _show_recipe(name: str, as_json: bool) -> None:
    """A recipe's name, file, description and YAML, as ``--recipe NAME`` would load it."""
    from vltk.config import available_recipes, recipe_description
    from vltk.errors import UserError, did_you_mean
    from vltk.plugins import get_plugin_manager

    recipes = available_recipes(get_plugin_manager().recipe_dirs())
    match = next((known for known in recipes if known.replace("_", "-") == name.replace("_", "-")), None)
    if match is None:
        raise UserError(f"unknown recipe '{name}';{did_you_mean(name, recipes)} see `vltk list recipes`")
    path = recipes[match]
    text = path.read_text(encoding="utf-8", errors="replace")
    if as_json:
        payload = {"name": match, "file": str(path), "description": recipe_description(path), "yaml": text}
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"recipe {match}  ({path})")
    click.echo(f"train it with: vltk train --recipe {match}\n")
    click.echo(text, nl=not text.endswith("\n"))


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins: entry-point name, module, distribution, version and implemented hooks."""
    from vltk.plugins import get_plugin_manager

    infos = get_plugin_manager().plugins()
    if as_json:
        click.echo(json.dumps([info.__dict__ | {"hooks": list(info.hooks)} for info in infos], indent=2))
        return
    if not infos:
        click.echo(f"no plugins loaded: {_how_to_get_plugins()}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vltk plugins")
    for column in ("name", "module", "distribution", "version", "hooks"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            *(
                escape(v)
                for v in (info.name, info.module, info.distribution or "-", info.version or "-", ", ".join(info.hooks))
            )
        )
    Console(width=max(120, Console().width)).print(table)
