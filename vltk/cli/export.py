"""``vltk export``: a slim standalone checkpoint and a ``torch.export`` program of a trained model.

The heavy lifting is :mod:`vltk.engine.export`; this command resolves what to export (a run folder's ``best.pt``,
else its ``last.pt``, or a checkpoint file), checks that the slim checkpoint rebuilds a model with the same
logits and that the program reproduces them, and writes everything at the end (nothing is left behind when a
step fails).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vltk.errors import UserError

EXPORT_EPILOG = """\b
Examples:
  vltk export runs/default --output exported/            # best.pt (else last.pt) of a run folder
  vltk export runs/rein-synthetic/best.pt --backbone-weights eva02.pt --output exported/ --size 512,1024
  vltk export runs/default --output exported/ --onnx     # also model.onnx, where the ops allow
Writes model.pt (weights the model uses, backbone included; vltk eval/predict and vltk.load read it),
model.pt2 (torch.export.load(...).module()(images) -> class scores) and export.json.
"""

#: Largest difference between the eager model's scores and a rebuilt or exported one that counts as equal.
TOLERANCE = 1e-4


def checkpoint_of(target: str | Path) -> Path:
    """A run folder's ``best.pt`` (else ``last.pt``), or ``target`` itself when it is a file."""
    path = Path(target)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"run folder '{path}' holds no best.pt or last.pt; give a finished run or a checkpoint file")
    if not path.exists():
        raise UserError(f"'{path}' does not exist; give a run folder or a checkpoint (.pt) written by `vltk train`")
    return path


def parse_size(text: str | None, default: Any) -> tuple[int, int]:
    """``"512"`` or ``"512,1024"`` -> ``(height, width)``; ``None`` -> the run's ``eval.crop_size``."""
    if text is None:
        return (default, default) if isinstance(default, int) else (int(default[0]), int(default[1]))
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise UserError(f"--size must be one positive int or HEIGHT,WIDTH (e.g. --size 512,1024), got {text!r}")
    return (parts[0], parts[-1])


def _max_difference(first: Any, second: Any) -> float:
    return float((first.float() - second.float()).abs().max())


def _runs_with_batch(exported: Any, images: Any) -> bool:
    """Whether the program accepts another batch size than the example's (a dynamic batch dimension)."""
    try:
        exported.module()(images)
    except Exception:  # a specialised program raises a guard error on any other shape
        return False
    return True


def export_checkpoint(
    target: str | Path,
    output: str | Path,
    *,
    backbone_weights: str | None = None,
    size: tuple[int, int] | None = None,
    program: bool = True,
    onnx: bool = False,
) -> dict[str, Any]:
    """Python API of ``vltk export``; returns what ``export.json`` records."""
    import torch

    from vltk.cli.run import build_checkpoint_model, load_checkpoint_config
    from vltk.engine.checkpoint import save_atomic
    from vltk.engine.export import export_onnx, export_program, slim_state, unused_prefixes
    from vltk.engine.preflight import check_output_folder, make_output_folder
    from vltk.engine.report import to_json
    from vltk.tasks import get_task

    checkpoint = checkpoint_of(target)
    out = Path(output)
    check_output_folder(out)
    state, run = load_checkpoint_config(checkpoint, (), backbone_weights)
    names = list(state.get("class_names") or [])
    source = f"checkpoint '{checkpoint}'"
    model = build_checkpoint_model(state, run, names, 255, source=source)
    label_maps = get_task(run.task).predicts_label_maps
    height, width = size or parse_size(None, run.config.eval.crop_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, height, width, generator=generator)  # 2: torch.export specialises sizes 0 and 1
    omitted = unused_prefixes(model, example) if label_maps else []
    slim = slim_state(state, model, omitted, str(checkpoint.resolve()))
    record: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "task": run.task,
        "class_names": names,
        "input": {"shape": ["batch", 3, height, width], "range": "RGB in 0..1"} if label_maps else None,
        "omitted": omitted,
        "files": {},
    }
    if label_maps:
        with torch.no_grad():
            expected = model.predict(example)
        # the slim file must rebuild the same model: omitting something inference needs would show here
        rebuilt = build_checkpoint_model(slim, run, names, 255, source="the exported checkpoint")
        with torch.no_grad():
            record["rebuilt_max_abs_diff"] = _max_difference(rebuilt.predict(example), expected)
        if record["rebuilt_max_abs_diff"] > TOLERANCE:
            raise RuntimeError(f"the slim checkpoint changes the model's scores by {record['rebuilt_max_abs_diff']}")
    exported = None
    if program and label_maps:
        exported = export_program(model, example)
        with torch.no_grad():
            record["program_max_abs_diff"] = _max_difference(exported.module()(example), expected)
        record["input"]["dynamic_batch"] = _runs_with_batch(exported, example[:1])
        if record["program_max_abs_diff"] > TOLERANCE:
            raise RuntimeError(f"the exported program changes the scores by {record['program_max_abs_diff']}")
    make_output_folder(out)
    save_atomic(slim, out / "model.pt")
    record["files"]["model.pt"] = (out / "model.pt").stat().st_size
    if exported is not None:
        temporary = out / ".model.tmp.pt2"
        torch.export.save(exported, str(temporary))
        temporary.replace(out / "model.pt2")
        record["files"]["model.pt2"] = (out / "model.pt2").stat().st_size
    if onnx and label_maps:
        record["onnx_error"] = export_onnx(model, example, out / "model.onnx")
        if record["onnx_error"] is None:
            record["files"]["model.onnx"] = (out / "model.onnx").stat().st_size
    record["source_size"] = checkpoint.stat().st_size
    (out / "export.json").write_text(to_json(record))
    return record


@click.command("export", epilog=EXPORT_EPILOG)
@click.argument("target", metavar="RUN_OR_CHECKPOINT")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="folder for the exported files")
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False),
    help="backbone file for checkpoints saved without their frozen backbone",
)
@click.option("--size", help="image size of the program, H or H,W [default: the run's eval.crop_size]")
@click.option("--no-program", is_flag=True, help="write only the slim checkpoint (no torch.export program)")
@click.option(
    "--onnx", is_flag=True, help="also write model.onnx (TorchScript exporter; a note when an op has no ONNX form)"
)
def export_command(
    target: str, output: str, backbone_weights: str | None, size: str | None, no_program: bool, onnx: bool
) -> None:
    """Export a trained model: slim standalone checkpoint + torch.export program (+ ONNX)."""
    record = export_checkpoint(
        target,
        output,
        backbone_weights=backbone_weights,
        size=parse_size(size, 0) if size else None,
        program=not no_program,
        onnx=onnx,
    )
    sizes = ", ".join(f"{name} {count / 1e6:.1f} MB" for name, count in record["files"].items())
    click.echo(f"{sizes} (from {record['source_size'] / 1e6:.1f} MB) -> {output}")
    if record["omitted"]:
        click.echo(f"omitted (never used by inference): {', '.join(record['omitted'])}")
    if record.get("onnx_error"):
        click.echo(f"note: model.onnx not written: {record['onnx_error']}", err=True)
