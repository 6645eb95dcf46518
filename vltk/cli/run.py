"""``vltk train`` and ``vltk eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vltk.errors import UserError

TRAIN_EPILOG = """\b
Examples:
  vltk train                                          # default recipe (tiny EVA02 + FPN, synthetic, CPU)
  vltk train --recipe rein/synthetic                  # Rein adapter, same data
  vltk train --adapter rein adapter.lora_dim=8 train.iters=100
  vltk train --dry-run                                # print the resolved config and stop
  vltk train --output runs/exp1 --resume              # continue from runs/exp1/last.pt
  vltk train --recipe clip-gap/synthetic              # detection: CLIP the Gap on synthetic boxes, AP50
  vltk train --task detection --backbone clip-resnet --augmenter clip-gap --decoder clip-faster-rcnn
Overrides are KEY=VALUE with dotted keys: train.lr=1e-4, dataset.domains=[synthetic,fog], seed=3.
"""


def _resolved_config(recipe: str | None, components: dict[str, Any], overrides: tuple[str, ...]) -> Any:
    from vltk.config import build_config, resolve
    from vltk.plugins import get_plugin_manager

    manager = get_plugin_manager()
    config = build_config(recipe, components=components, overrides=list(overrides), recipe_dirs=manager.recipe_dirs())
    return resolve(config, manager.get_registry())


@click.command("train", epilog=TRAIN_EPILOG)
@click.argument("overrides", nargs=-1)
@click.option("--recipe", help="recipe name (`vltk list recipes`) or YAML file [default: default]")
@click.option("--backbone", help="backbone name (`vltk list backbones`)")
@click.option("--adapter", help="adapter name")
@click.option("--prompter", help="prompter name")
@click.option("--decoder", help="decoder name")
@click.option("--augmenter", "augmenters", multiple=True, help="augmenter name (repeatable)")
@click.option("--dataset", help="dataset name")
@click.option(
    "--task",
    type=click.Choice(["segmentation", "detection"]),
    help="what to predict [default: the recipe's]; detection without --dataset uses synthetic-det",
)
@click.option("--output", type=click.Path(file_okay=False), help="run folder [default: runs/<recipe>]")
@click.option("--resume", is_flag=True, help="continue from <output>/last.pt when it exists")
@click.option("--dry-run", is_flag=True, help="print the resolved configuration and exit")
@click.option("--quiet", is_flag=True, help="no progress output (the final table is still printed)")
def train_command(
    overrides: tuple[str, ...],
    recipe: str | None,
    backbone: str | None,
    adapter: str | None,
    prompter: str | None,
    decoder: str | None,
    augmenters: tuple[str, ...],
    dataset: str | None,
    task: str | None,
    output: str | None,
    resume: bool,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Train a model. With no arguments, runs the default recipe on the embedded synthetic dataset."""
    components = {
        "task": task,
        "backbone": backbone,
        "adapter": adapter,
        "prompter": prompter,
        "decoder": decoder,
        "dataset": dataset,
        "augmenters": list(augmenters),
    }
    run = _resolved_config(recipe, components, overrides)
    out = Path(output or run.config.output or Path("runs") / (run.config.recipe or "run").replace("/", "-"))
    run = run.with_settings(output=str(out))
    if dry_run:
        from vltk.config import to_yaml

        click.echo(to_yaml(run), nl=False)
        return
    if (out / "last.pt").is_file() and not resume:
        click.echo(f"note: {out} already holds last.pt; starting over (pass --resume to continue it)", err=True)
    from vltk.engine.trainer import Trainer

    trainer = Trainer(run, out, resume=resume, quiet=quiet)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted at iteration {trainer.step}: {out / 'last.pt'} saved; continue with "
            f"`vltk train --output {out} --resume`",
            err=True,
        )
        raise SystemExit(130) from None
    click.echo(f"run folder: {out}  (best.pt, last.pt, metrics.json, curves.png, overlays/)")


def load_checkpoint_config(
    checkpoint: str | Path, overrides: tuple[str, ...] | list[str] = (), backbone_weights: str | None = None
) -> tuple[dict[str, Any], Any]:
    """A checkpoint's state and the resolved run it was trained with (plus ``overrides``).

    Shared by ``vltk eval`` and ``vltk predict``. A checkpoint saved without its frozen backbone needs that
    backbone's weights file: the one recorded in its config, or ``backbone_weights``.
    """
    from vltk.config import build_config, resolve
    from vltk.engine.checkpoint import load_checkpoint
    from vltk.plugins import get_plugin_manager

    state = load_checkpoint(checkpoint)
    extra = list(overrides)
    if backbone_weights:
        extra.append(f"backbone.pretrained={backbone_weights}")
    elif not state.get("backbone_included", True):
        pretrained = state["config"].get("backbone", {}).get("pretrained")
        if not pretrained or not Path(pretrained).is_file():
            raise UserError(
                f"checkpoint '{checkpoint}' holds no backbone weights (the backbone was frozen) and its "
                f"pretrained file {pretrained!r} is not available; pass --backbone-weights FILE"
            )
    run = resolve(build_config(base=state["config"], overrides=extra), get_plugin_manager().get_registry())
    return state, run


def build_checkpoint_model(state: dict[str, Any], run: Any, class_names: list[str], ignore_index: int) -> Any:
    """The model of ``run`` with the checkpoint's weights loaded (on the CPU, in eval mode)."""
    from vltk.engine.trainer import load_model_state
    from vltk.pipeline import build_model

    model = build_model(run, class_names=class_names, ignore_index=ignore_index)
    load_model_state(model, state)
    return model.eval()


EVAL_EPILOG = """\b
Examples:
  vltk eval --checkpoint runs/default/best.pt
  vltk eval --checkpoint runs/rein-synthetic/best.pt dataset.num_val=64
  vltk eval --checkpoint rein_head.pt --backbone-weights eva02_converted.pt
"""


@click.command("eval", epilog=EVAL_EPILOG)
@click.argument("overrides", nargs=-1)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="a vltk checkpoint (.pt)")
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False),
    help="backbone file for checkpoints saved without their frozen backbone",
)
@click.option(
    "--output", type=click.Path(file_okay=False), help="where to write eval.json [default: beside the checkpoint]"
)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def eval_command(
    overrides: tuple[str, ...], checkpoint: str, backbone_weights: str | None, output: str | None, as_json: bool
) -> None:
    """Evaluate a checkpoint on every domain of its dataset: per-domain mIoU, target average and gap."""
    from rich.console import Console

    from vltk.engine.evaluation import evaluate
    from vltk.engine.report import to_json
    from vltk.engine.trainer import pick_device
    from vltk.pipeline import build_data_source
    from vltk.tasks import get_task

    state, run = load_checkpoint_config(checkpoint, overrides, backbone_weights)
    source = build_data_source(run)
    if list(source.classes) != list(state.get("class_names", source.classes)):
        raise UserError("the dataset's classes differ from the checkpoint's; evaluate on the dataset it was trained on")
    device = pick_device(run.config.device)
    task = get_task(run.task)
    model = build_checkpoint_model(state, run, list(source.classes), source.ignore_index)
    results = evaluate(model.to(device), source, task, run.config.eval, device)
    results["checkpoint"] = str(checkpoint)
    out = Path(output) if output else Path(checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(to_json(results))
    if as_json:
        click.echo(to_json(results))
    else:
        Console().print(task.result_table(results, source.train_domains, title=f"eval {checkpoint}"))
