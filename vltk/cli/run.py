"""``vltk train`` and ``vltk eval``."""

from __future__ import annotations

import os
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
  vltk train --resume runs/exp1                       # continue runs/exp1 with its own saved configuration
  vltk train --resume runs/exp1 train.iters=600 --allow-changes   # ... and change it (kept in changes.yaml)
  vltk train --recipe clip-gap/synthetic              # detection: CLIP the Gap on synthetic boxes, AP50
  vltk train --logger jsonl --logger tensorboard      # metrics.jsonl + RUN/tensorboard (`vltk list loggers`)
  vltk train --task detection --backbone clip-resnet --augmenter clip-gap --decoder clip-faster-rcnn
  vltk train --nproc 4 train.batch_size=16           # 4 data-parallel processes, 4 images each (torchrun)
Overrides are KEY=VALUE with dotted keys: train.lr=1e-4, dataset.domains=[synthetic,fog], seed=3.
Ctrl-C or SIGTERM stop at the next step with last.pt saved (exit 130 / 143); a second Ctrl-C stops at once.
"""

#: ``--resume`` given without a folder: the run folder is ``--output`` (or the recipe's default folder).
RESUME_HERE = ""


def _resolved_config(recipe: str | None, components: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> Any:
    from vltk.config import build_config, resolve
    from vltk.plugins import get_plugin_manager

    manager = get_plugin_manager()
    config = build_config(recipe, components=components, overrides=list(overrides), recipe_dirs=manager.recipe_dirs())
    return resolve(config, manager.get_registry())


def default_output(run: Any) -> Path:
    return Path(run.config.output or Path("runs") / (run.config.recipe or "run").replace("/", "-"))


def _folder_config(folder: Path) -> dict[str, Any] | None:
    """The configuration a run folder was trained with: ``config.resolved.yaml``, else its checkpoint's."""
    from vltk.engine.run_folder import saved_config

    saved = saved_config(folder)
    if saved is None and any((folder / name).is_file() for name in ("last.pt", "last.prev.pt")):
        from vltk.engine.checkpoint import load_resume_checkpoint

        found = load_resume_checkpoint(folder)
        saved = found[0]["config"] if found else None
    return saved


def plan_resume(
    resume: str,
    output: str | None,
    recipe: str | None,
    components: dict[str, Any],
    overrides: list[str],
    allow_changes: bool,
) -> tuple[Path, Any, dict[str, Any]]:
    """``(run folder, resolved run, changes)`` of ``vltk train --resume``.

    The run is rebuilt from the folder's saved configuration; what the command line gives (a recipe, component
    flags, overrides) is applied on top, and any difference from the saved configuration is refused with a
    one-line summary (dotted keys, old -> new) unless ``allow_changes``. A folder given as ``--output DIR
    --resume`` that holds no run yet starts one from the command line, so one command can start and restart a
    job; ``--resume DIR`` names an existing run.
    """
    from vltk.config import build_config, resolve
    from vltk.engine.run_folder import CHANGES_NAME, config_changes, describe_changes
    from vltk.plugins import get_plugin_manager

    fresh = None
    if resume == RESUME_HERE:
        if output is None:
            fresh = _resolved_config(recipe, components, overrides)
        folder = Path(output) if output is not None else default_output(fresh)
    else:
        folder = Path(resume)
        if output is not None and Path(output) != folder:
            raise UserError(
                f"--resume {resume} and --output {output} name two folders; give the run folder once (--resume DIR)"
            )
        if not folder.is_dir():
            raise UserError(
                f"run folder '{folder}' does not exist; give the folder of an earlier run (`--output DIR --resume` "
                "starts a new run in DIR when it holds none)"
            )
    saved = _folder_config(folder)
    if saved is None:
        if resume != RESUME_HERE:
            raise UserError(
                f"'{folder}' holds no run to resume (no config.resolved.yaml or last.pt); give the folder of an "
                "earlier run, or start one with --output"
            )
        return folder, fresh or _resolved_config(recipe, components, overrides), {}
    manager = get_plugin_manager()
    base = _resolve_saved(saved, folder)
    given = bool(overrides) or any(value not in (None, (), []) for value in components.values())
    if recipe is not None:
        new = fresh or _resolved_config(recipe, components, overrides)
    elif given:
        new = resolve(build_config(base=saved, components=components, overrides=overrides), manager.get_registry())
    else:
        new = base
    changes = config_changes(base.config.to_dict(), new.config.to_dict())
    if changes and not allow_changes:
        raise UserError(
            f"resuming '{folder}' would change {describe_changes(changes)}; a resumed run keeps the configuration "
            f"it was trained with: drop these, or pass --allow-changes to apply them (kept in {CHANGES_NAME})"
        )
    return folder, new, changes


def interrupt_message(trainer: Any, interrupt: BaseException) -> str:
    """What a stopped run says: which checkpoint holds what, and the resume command that works as printed."""
    from vltk.engine.run_folder import resume_command

    name = getattr(interrupt, "signal_name", "Ctrl-C")
    command = resume_command(trainer.output, trainer.dist.world_size)
    step, saved, path = trainer.step, trainer.last_saved_step, trainer.last_saved_path
    if saved == step and step >= trainer.config.train.iters:
        return (
            f"\n{name} during the final evaluation: {path} holds the trained model (iteration {step}); "
            f"`{command}` runs the final evaluation"
        )
    if saved == step:
        return f"\n{name}: stopped at iteration {step}; {path} saved; continue with `{command}`"
    if saved is not None:
        return (
            f"\n{name}: stopped at once at iteration {step} without saving; {path} holds iteration {saved}; "
            f"continue from there with `{command}`"
        )
    return f"\n{name}: stopped at iteration {step}; no checkpoint was saved yet (`{command}` starts over)"


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
    "--logger",
    "loggers",
    multiple=True,
    help="experiment logger (repeatable; replaces the recipe's list): jsonl, tensorboard, wandb (`vltk list loggers`)",
)
@click.option(
    "--task",
    type=click.Choice(["segmentation", "detection", "pretrain"]),
    help="what to predict [default: the recipe's]; detection without --dataset uses synthetic-det",
)
@click.option("--output", type=click.Path(file_okay=False), help="run folder [default: runs/<recipe>]")
@click.option(
    "--resume",
    is_flag=False,
    flag_value=RESUME_HERE,
    default=None,
    metavar="[RUN_DIR]",
    help="continue the run in RUN_DIR (or --output) from its config.resolved.yaml and last.pt",
)
@click.option(
    "--allow-changes",
    is_flag=True,
    help="with --resume: apply the flags and overrides that change the saved configuration (kept in changes.yaml)",
)
@click.option("--dry-run", is_flag=True, help="print the resolved configuration and exit")
@click.option("--quiet", is_flag=True, help="no progress output (the final table is still printed)")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="data-parallel processes on this machine (torchrun); train.batch_size is the global batch, split evenly",
)
def train_command(
    overrides: tuple[str, ...],
    recipe: str | None,
    backbone: str | None,
    adapter: str | None,
    prompter: str | None,
    decoder: str | None,
    augmenters: tuple[str, ...],
    dataset: str | None,
    loggers: tuple[str, ...],
    task: str | None,
    output: str | None,
    resume: str | None,
    allow_changes: bool,
    dry_run: bool,
    quiet: bool,
    nproc: int,
) -> None:
    """Train a model. With no arguments, runs the default recipe on the embedded synthetic dataset."""
    extra = list(overrides)
    if resume and "=" in resume and not Path(resume).is_dir():  # `--resume train.iters=5`: an override, no folder
        extra.insert(0, resume)
        resume = RESUME_HERE
    components = {
        "task": task,
        "backbone": backbone,
        "adapter": adapter,
        "prompter": prompter,
        "decoder": decoder,
        "dataset": dataset,
        "augmenters": list(augmenters),
        "loggers": list(loggers),
    }
    changes: dict[str, Any] = {}
    if resume is None:
        if allow_changes:
            raise UserError("--allow-changes only applies with --resume; leave it out to start a new run")
        run = _resolved_config(recipe, components, extra)
        out = Path(output) if output else default_output(run)
    else:
        out, run, changes = plan_resume(resume, output, recipe, components, extra, allow_changes)
    run = run.with_settings(output=str(out))
    if dry_run:
        from vltk.config import to_yaml

        click.echo(to_yaml(run), nl=False)
        return
    if nproc > 1:
        from vltk.engine.distributed import launch_local

        check_launch(nproc, run)
        worker = worker_arguments(overrides=extra, options=_launch_options(locals()), output=out, resume=resume)
        raise SystemExit(launch_local(nproc, worker))
    from vltk.engine.distributed import launched_distributed, shutdown

    main = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun only rank 0 prints
    if (out / "last.pt").is_file() and resume is None and main:
        click.echo(f"note: {out} already holds last.pt; starting over (pass --resume to continue it)", err=True)
    from vltk.engine.trainer import Trainer

    try:
        try:
            trainer = Trainer(run, out, resume=resume is not None, quiet=quiet, changes=changes)
        except KeyboardInterrupt:
            click.echo("\ninterrupted before training started", err=True)
            raise SystemExit(130) from None
        try:
            trainer.fit()
        except KeyboardInterrupt as interrupt:
            if main:
                click.echo(interrupt_message(trainer, interrupt), err=True)
            raise SystemExit(getattr(interrupt, "exit_code", 130)) from None
    finally:
        if launched_distributed():
            shutdown()
    if main:
        names = (
            "best.pt",
            "last.pt",
            "open_clip.pt",
            "metrics.json",
            "metrics.jsonl",
            "curves.png",
            "tensorboard",
            "overlays",
        )
        present = [name + ("/" if (out / name).is_dir() else "") for name in names if (out / name).exists()]
        click.echo(f"run folder: {out}  ({', '.join(present)})")


#: ``vltk train`` options a ``--nproc`` launch hands on to its workers unchanged (``--output`` and ``--resume``
#: are handed on as resolved: the folder the parent chose).
LAUNCH_OPTIONS: tuple[str, ...] = ("recipe", "backbone", "adapter", "prompter", "decoder", "dataset", "task")


def _launch_options(values: dict[str, Any]) -> dict[str, Any]:
    """The flags of one ``vltk train`` call that its workers must see: component choices, the repeatable
    ``--augmenter``, and the switches."""
    options: dict[str, Any] = {name: values[name] for name in LAUNCH_OPTIONS}
    options["augmenter"] = list(values["augmenters"])
    options["allow-changes"] = values["allow_changes"]
    options["quiet"] = values["quiet"]
    return options


def worker_arguments(*, overrides: list[str], options: dict[str, Any], output: Path, resume: str | None) -> list[str]:
    """``vltk train`` arguments of each worker of a ``--nproc`` launch: the same run, the resolved folder, no
    ``--nproc``. ``--resume`` comes last, where a bare flag cannot take an override as its folder."""
    arguments = ["train", *overrides]
    for name, value in options.items():
        if value is None or value is False or value == []:
            continue
        if value is True:
            arguments.append(f"--{name}")
        else:
            for item in value if isinstance(value, list) else [value]:
                arguments.append(f"--{name}={item}")
    if resume is None:
        arguments.append(f"--output={output}")
    elif resume == RESUME_HERE:
        arguments += [f"--output={output}", "--resume"]
    else:
        arguments.append(f"--resume={resume}")
    return arguments


def check_launch(nproc: int, run: Any) -> None:
    """Refuse a ``--nproc`` launch that cannot work, before any process starts: inside torchrun (which already
    started the processes), more processes than GPUs, or a batch that does not split evenly."""
    from vltk.engine.distributed import DistributedContext, launched_distributed, local_batch_size

    if launched_distributed():
        raise UserError("--nproc starts its own processes; under torchrun leave it out (torchrun sets the ranks)")
    import torch

    from vltk.engine.trainer import pick_device

    device = pick_device(run.config.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {nproc} needs {nproc} GPUs but {torch.cuda.device_count()} are visible; use at most that many "
            "processes, or device=cpu"
        )
    local_batch_size(DistributedContext(world_size=nproc), run.config.train.batch_size)


def load_checkpoint_config(
    checkpoint: str | Path, overrides: tuple[str, ...] | list[str] = (), backbone_weights: str | None = None
) -> tuple[dict[str, Any], Any]:
    """A checkpoint's state and the resolved run it was trained with (plus ``overrides``).

    Shared by ``vltk eval``, ``vltk predict`` and :func:`vltk.load`. A checkpoint saved without its frozen backbone
    needs that backbone's weights file: ``backbone_weights``, else the one recorded in its config, else the
    absolute path it recorded (so a relative path still works from another folder). A checkpoint that holds its
    backbone needs no file at all: the backbone is built empty and the checkpoint fills it. A released paper
    checkpoint (Rein, DenseCLIP, LSeg, CLIP the Gap, Hugging Face Mask2Former) is converted in memory by its
    plugin's format (:mod:`vltk.engine.releases`).
    """
    from vltk.builtin_weights import is_builtin
    from vltk.engine.fingerprint import recorded_source
    from vltk.engine.releases import load_checkpoint_or_release

    state = load_checkpoint_or_release(checkpoint, backbone_weights=backbone_weights, overrides=overrides)
    extra = list(overrides)
    backbone_section = state["config"].get("backbone", {})
    if backbone_weights:
        extra.append(f"backbone.pretrained={backbone_weights}")
    elif not state.get("backbone_included", True):
        recorded = backbone_section.get("pretrained")
        absolute = recorded_source(state)
        if recorded and (is_builtin(recorded) or Path(recorded).is_file()):
            pass  # shipped weights resolve by name wherever the package is installed
        elif absolute and Path(absolute).is_file():
            extra.append(f"backbone.pretrained={absolute}")
        else:
            tried = " or ".join(repr(path) for path in dict.fromkeys(p for p in (recorded, absolute) if p)) or "none"
            raise UserError(
                f"checkpoint '{checkpoint}' holds no backbone weights (the backbone was frozen) and the file it was "
                f"trained from ({tried}) is not available; pass --backbone-weights FILE"
            )
    elif "pretrained" in backbone_section and backbone_section["pretrained"] is not None:
        extra.append("backbone.pretrained=null")  # the checkpoint's own backbone tensors replace the file's
    run = _resolve_saved(state["config"], Path(checkpoint).parent, overrides=extra)
    return state, run


def _resolve_saved(saved: dict[str, Any], folder: Path, **build: Any) -> Any:
    """A saved configuration resolved again; a component that is gone names the plugin to reinstall, from the
    run folder's environment.json."""
    from vltk.config import build_config, resolve
    from vltk.engine.run_folder import missing_plugins_hint
    from vltk.plugins import get_plugin_manager

    try:
        return resolve(build_config(base=saved, **build), get_plugin_manager().get_registry())
    except UserError as error:
        hint = missing_plugins_hint(folder) if str(error).startswith("unknown ") else ""
        if not hint:
            raise
        raise UserError(f"{error};{hint}") from None


def build_checkpoint_model(
    state: dict[str, Any], run: Any, class_names: list[str], ignore_index: int, *, source: str = "checkpoint"
) -> Any:
    """The model of ``run`` with the checkpoint's weights loaded (on the CPU, in eval mode).

    Weights that do not fit (another variant or architecture given as an override) are one error naming the keys
    and both shapes; a backbone-less checkpoint given another backbone than it was trained on is refused by its
    fingerprint. A checkpoint that holds its backbone does not warn about random backbone weights: it has them.
    """
    import warnings

    from vltk.engine.checkpoint import load_model_state
    from vltk.engine.fingerprint import check_backbone_fingerprint
    from vltk.errors import RandomWeightsWarning
    from vltk.pipeline import build_model

    with warnings.catch_warnings():
        if state.get("backbone_included", True):
            warnings.simplefilter("ignore", RandomWeightsWarning)
        model = build_model(run, class_names=class_names, ignore_index=ignore_index)
    weights = run.config.backbone.options().get("pretrained")
    check_backbone_fingerprint(model, state, source=source, weights=weights)
    load_model_state(model, state, source=source, fix="use the configuration it was trained with (drop the overrides)")
    return model.eval()


EVAL_EPILOG = """\b
Examples:
  vltk eval --checkpoint runs/default/best.pt
  vltk eval --checkpoint runs/rein-synthetic/best.pt dataset.num_val=64
  vltk eval --checkpoint rein_head.pt --backbone-weights eva02_converted.pt
  vltk eval --checkpoint dinov2_rein_and_head.pth --backbone-weights dinov2_converted.pth   # a Rein release
  vltk eval --checkpoint runs/lseg-synthetic/best.pt --labels "road,sidewalk,houses,...,bike"   # zero-shot names
"""


def open_vocabulary_eval_model(model: Any, labels: list[str], classes: list[str]) -> None:
    """Rename ``model``'s classes to ``labels`` (same order as ``classes``) for a zero-shot evaluation.

    Why only a decoder that classifies with the text (LSeg with no score map in its input): the labels still
    index the dataset's masks, so the scores must come from the new words and nothing else; a decoder tied to
    the training classes would be scored on what it learned, not on the names.
    """
    from vltk.predictor import open_vocabulary_predict

    if len(labels) != len(classes):
        raise UserError(
            f"--labels gives {len(labels)} names but the dataset has {len(classes)} classes; name every class, "
            f"in the dataset's order ({', '.join(classes)})"
        )
    if open_vocabulary_predict(model, labels) != model.predict:
        raise UserError(
            "--labels in eval needs a decoder that classifies with the text (e.g. --decoder lseg with "
            "prompter.score_concat_index=null); this checkpoint's decoder is tied to its training classes"
        )


def evaluate_checkpoint(
    checkpoint: str,
    overrides: tuple[str, ...] = (),
    *,
    backbone_weights: str | None = None,
    labels: list[str] | None = None,
    output: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Any, list[str]]:
    """``vltk eval`` as a function: ``(results, task, train domains)`` of ``checkpoint`` on every domain; the
    results are also written to eval.json.

    With ``labels`` the classes are named by those words (open vocabulary: the same masks, other names). Nothing
    is written before the checkpoint, the data and the labels have been checked.
    """
    from rich.console import Console

    from vltk.engine.evaluation import evaluate
    from vltk.engine.preflight import check_data_source, check_output_folder, make_output_folder
    from vltk.engine.progress import EvalProgress
    from vltk.engine.report import to_json
    from vltk.engine.trainer import pick_device
    from vltk.pipeline import build_data_source
    from vltk.tasks import get_task

    out = Path(output) if output else Path(checkpoint).parent
    check_output_folder(out)  # before any work: eval.json must have somewhere to go
    state, run = load_checkpoint_config(checkpoint, overrides, backbone_weights)
    source = build_data_source(run)
    classes = list(source.classes)
    if classes != list(state.get("class_names", source.classes)):
        raise UserError("the dataset's classes differ from the checkpoint's; evaluate on the dataset it was trained on")
    check_data_source(source)
    device = pick_device(run.config.device)
    task = get_task(run.task)
    model = build_checkpoint_model(state, run, classes, source.ignore_index, source=f"checkpoint '{checkpoint}'")
    if labels is not None:
        open_vocabulary_eval_model(model, labels, classes)
    shown = EvalProgress(Console(stderr=True), enabled=progress)
    try:
        results = evaluate(model.to(device), source, task, run.config.eval, device, progress=shown)
    finally:
        shown.close()
    results["checkpoint"] = str(checkpoint)
    if labels is not None:
        results["labels"] = dict(zip(classes, labels, strict=True))
    make_output_folder(out)
    (out / "eval.json").write_text(to_json(results))
    return results, task, list(source.train_domains)


@click.command("eval", epilog=EVAL_EPILOG)
@click.argument("overrides", nargs=-1)
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False),
    help="a vltk checkpoint (.pt) or a released paper checkpoint",
)
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False),
    help="backbone file for checkpoints saved without their frozen backbone",
)
@click.option(
    "--labels",
    help="comma-separated names for the dataset's classes, in its order (zero-shot: an open-vocabulary decoder "
    "scored with words it was not trained on)",
)
@click.option(
    "--output", type=click.Path(file_okay=False), help="where to write eval.json [default: beside the checkpoint]"
)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def eval_command(
    overrides: tuple[str, ...],
    checkpoint: str,
    backbone_weights: str | None,
    labels: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Evaluate a checkpoint on every domain of its dataset: per-domain mIoU, target average and gap."""
    from rich.console import Console

    from vltk.cli.predict import parse_labels
    from vltk.engine.report import to_json

    names = parse_labels(labels) if labels is not None else None
    results, task, train_domains = evaluate_checkpoint(
        checkpoint, overrides, backbone_weights=backbone_weights, labels=names, output=output, progress=not as_json
    )
    if as_json:
        click.echo(to_json(results))
    else:
        Console().print(task.result_table(results, train_domains, title=f"eval {checkpoint}"))
