"""``vltk convert RELEASE DST [KEY=VALUE ...] [--from FORMAT]``: a released paper checkpoint -> vltk checkpoint.

The backbone side of ``vltk convert`` (``--to BACKBONE``) rewrites weight files; without ``--to`` the source is a
released checkpoint of a paper (Rein, DenseCLIP, LSeg, CLIP the Gap, Hugging Face Mask2Former), its format
detected by characteristic keys among those the plugins declare (``vltk_release_formats``) or named with
``--from``. The result is what ``vltk eval --checkpoint`` reads (``model``, ``config``, ``class_names``,
``backbone_included``) plus the recipe beside it (``DST`` with ``.yaml``) that rebuilds the model for
``vltk train --recipe``. ``KEY=VALUE`` are run overrides (``dataset=synthetic``, ``decoder.num_heads=4``) applied
to the recipe; the weights are checked against the model the recipe builds before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vltk.api import UserError, check_checkpoint, did_you_mean, release_formats


def _find(source: str, from_format: str | None, hints: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    formats = release_formats()
    if from_format is not None:
        if from_format not in formats:
            names = sorted(formats)
            raise UserError(
                f"vltk convert --from '{from_format}': not a release format vltk reads;"
                f"{did_you_mean(from_format, names)} choose one of {', '.join(names)}"
            )
        release_format = formats[from_format][1]
        converted = release_format.convert(source, hints)
        if converted is None:
            raise UserError(
                f"'{source}' is not a {release_format.title} file (expected keys like {release_format.expects}); "
                f"pass the released checkpoint of that paper, or drop --from to detect the format"
            )
        return from_format, release_format, converted
    for name, (_, release_format) in formats.items():
        converted = release_format.convert(source, hints)
        if converted is not None:
            return name, release_format, converted
    listed = "; ".join(f"{name}: {item.title}" for name, (_, item) in formats.items())
    raise UserError(
        f"'{source}' is no released checkpoint vltk recognises (formats: {listed}); for backbone weights pass "
        "--to BACKBONE, for a release name its format with --from FORMAT"
    )


def _write_atomic(write: Any, destination: Path) -> Path:
    """``write(temporary path)`` then rename onto ``destination``: a failure leaves no partial file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        return Path(temporary)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def convert_release(
    source: str,
    destination: str,
    overrides: tuple[str, ...] = (),
    *,
    from_format: str | None = None,
    force: bool = False,
    backbone_weights: str | None = None,
) -> list[str]:
    """Convert the released checkpoint ``source`` and write ``destination`` plus its recipe; the report lines.

    Every problem (missing or unknown file, a file of another format, weights that do not fit the recipe's model,
    an existing ``destination`` without ``force``) is one :class:`UserError`, raised before anything is written.
    """
    import torch
    import yaml

    target = Path(destination).expanduser()
    recipe = target.with_suffix(".yaml")
    if not Path(source).expanduser().is_file():
        raise UserError(f"vltk convert: '{source}' does not exist; pass the path of a released checkpoint file")
    if target.exists() and target.resolve() == Path(source).expanduser().resolve():
        raise UserError(f"vltk convert: DST '{destination}' is SRC; write the converted file elsewhere")
    for path in (target, recipe):
        if path.exists() and not force:
            raise UserError(f"vltk convert: '{path}' exists; pass --force to overwrite it")
    hints = {"overrides": list(overrides), "backbone_weights": backbone_weights}
    name, release_format, converted = _find(source, from_format, hints)
    checkpoint = check_checkpoint(converted, list(overrides))
    config = checkpoint["config"]
    text = f"# vltk recipe of {Path(source).name} ({release_format.title}), written by vltk convert\n"
    text += yaml.safe_dump(config, sort_keys=False)
    saved_model = _write_atomic(lambda path: torch.save(checkpoint, path), target)
    try:
        saved_recipe = _write_atomic(lambda path: path.write_text(text), recipe)
    except BaseException:
        saved_model.unlink(missing_ok=True)
        raise
    os.replace(saved_model, target)
    os.replace(saved_recipe, recipe)
    record = checkpoint["release"]
    lines = [
        f"read {source}: {release_format.title} (--from {name})",
        f"mapped {len(record['renamed'])} tensors; left out {len(record['dropped'])}"
        + (f" ({_reasons(record['dropped'])})" if record["dropped"] else ""),
        *(f"note: {note}" for note in record["notes"]),
        f"wrote {destination} (vltk checkpoint) and {recipe} (its recipe)",
    ]
    needs_backbone = not checkpoint.get("backbone_included", True) and not config["backbone"].get("pretrained")
    command = f"vltk eval --checkpoint {destination}"
    lines.append(f"evaluate it with: {command}" + (" --backbone-weights BACKBONE_FILE" if needs_backbone else ""))
    return lines


def _reasons(dropped: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for reason in dropped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{count} x {reason}" for reason, count in counts.items())


__all__ = ["convert_release"]
