"""``vltk predict``: label maps and colour overlays for image files, optionally with a new label list.

The model is rebuilt from the checkpoint exactly as ``vltk eval`` does (:func:`vltk.cli.run.load_checkpoint_config`).
With ``--labels`` a vision-language model segments with a label set it never saw in training (open vocabulary):
the prompter encodes the new names; an LSeg-style decoder (``open_vocabulary = True``) then has as many outputs as
labels, and a closed-set decoder (e.g. DenseCLIP's FPN, whose classifier is tied to the training classes) is
bypassed in favour of the model's pixel-text score map. Outputs per image ``<stem>``:

* ``<stem>.png``: class indices into the label list (uint8, or uint16 with more than 256 labels);
* ``<stem>_overlay.png``: the image beside the prediction blended on it;
* one ``labels.json`` with the label list, the palette, and which file came from which image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from vltk.errors import UserError
from vltk.predictor import image_error, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

PREDICT_EPILOG = """\b
Examples:
  vltk predict street.jpg --checkpoint runs/default/best.pt --output preds/
  vltk predict frames/ --checkpoint runs/lseg-synthetic/best.pt --labels "road,car,sky,tree,bus" --output preds/
  vltk predict big.png --checkpoint best.pt --slide --output preds/   # windows of the run's eval.crop_size/stride
A folder argument stands for the images in it (png, jpg, jpeg, bmp, webp). --labels needs a model with a
prompter (e.g. --prompter clip-template at training time).
"""


# --------------------------------------------------------------------------------------------------- labels


def parse_labels(text: str) -> list[str]:
    """``"road, car ,sky"`` -> ``["road", "car", "sky"]``; empty lists, empty names and duplicates are errors."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise UserError("--labels is empty: give comma-separated class names, e.g. --labels 'road,car,sky'")
    if not all(names):
        raise UserError(f"--labels has an empty name (two commas in a row or a trailing comma): {text!r}")
    seen: set[str] = set()
    duplicates = [name for name in names if name in seen or seen.add(name)]  # type: ignore[func-returns-value]
    if duplicates:
        raise UserError(f"--labels names {', '.join(dict.fromkeys(duplicates))} more than once; each label once")
    return names


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75, 1,1.25"`` -> ``(0.75, 1.0, 1.25)``; anything but positive numbers is an error."""
    try:
        factors = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--scales must be comma-separated numbers, e.g. --scales 0.75,1,1.25; got {text!r}") from None
    if min(factors) <= 0:
        raise UserError(f"--scales must be positive resize factors, got {text!r}")
    return factors


# --------------------------------------------------------------------------------------------------- images


def collect_images(arguments: Sequence[str]) -> list[Path]:
    """Files as given (folders expanded to their images, sorted); a missing path is an error naming it."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"image '{path}' does not exist")
    return paths


def check_images(paths: Sequence[Path]) -> None:
    """Fail before any work when a file is not a decodable image (PIL's header check + ``verify``)."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
            raise image_error(path, error) from None


def output_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique (``a``, ``a_1``...) when two inputs share one."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, index = path.stem, 1
        while stem in used:
            stem, index = f"{path.stem}_{index}", index + 1
        used.add(stem)
        stems.append(stem)
    return stems


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    output: str | Path,
    *,
    labels: list[str] | None = None,
    slide: bool = False,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    backbone_weights: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Python API of ``vltk predict``: write label PNGs, overlays and ``labels.json``; return that summary.

    The model and its predictions are :func:`vltk.load`'s (:class:`vltk.predictor.Predictor`), so the files
    written here hold what ``vltk.load(checkpoint).predict(image)`` returns.
    """
    import numpy as np
    from PIL import Image

    from vltk.engine.preflight import check_output_folder, make_output_folder
    from vltk.engine.report import to_json, write_overlay
    from vltk.predictor import load

    paths = collect_images([str(path) for path in images])
    check_images(paths)
    out = Path(output)
    check_output_folder(out)
    predictor = load(checkpoint, backbone_weights=backbone_weights, device=device)
    if labels is not None:
        predictor.set_labels(labels)
    names, palette = predictor.class_names, predictor.palette
    if len(names) > 65535:
        raise UserError(f"{len(names)} labels do not fit a 16-bit label PNG (at most 65535)")
    dtype = np.uint8 if len(names) <= 256 else np.uint16
    make_output_folder(out)
    written: dict[str, dict[str, str]] = {}
    for path, stem in zip(paths, output_stems(paths), strict=True):
        image = read_image(path)
        prediction = predictor.predict(image, slide=slide, flip=flip, scales=scales)
        label_path = out / f"{stem}.png"
        overlay_path = out / f"{stem}_overlay.png"
        Image.fromarray(prediction.astype(dtype)).save(label_path)
        if len(names) < 255:
            write_overlay(overlay_path, image, None, prediction, palette)
        else:  # colorize's lookup table holds 256 entries (255 = ignore): colour through the palette directly
            colored = np.asarray(palette, dtype=np.uint8)[prediction]
            blend = (0.4 * image + 0.6 * colored).astype(np.uint8)
            gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
            Image.fromarray(np.concatenate([image, gap, blend], axis=1)).save(overlay_path)
        written[str(path)] = {"label": str(label_path), "overlay": str(overlay_path)}
    summary = {
        "checkpoint": str(checkpoint),
        "labels": names,
        "palette": [list(color) for color in palette],
        "open_vocabulary": labels is not None,
        "scores_from": predictor.scores_from,
        "mode": "slide" if slide else "whole",
        "flip": flip,
        "scales": [float(scale) for scale in scales],
        "images": written,
    }
    (out / "labels.json").write_text(to_json(summary))
    return summary


@click.command("predict", epilog=PREDICT_EPILOG)
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="a vltk checkpoint (.pt)")
@click.option(
    "--labels",
    help="comma-separated class names that replace the training label set (needs a model with a prompter)",
)
@click.option("--output", required=True, type=click.Path(file_okay=False), help="folder for the PNGs and labels.json")
@click.option("--slide", is_flag=True, help="sliding-window inference with the run's eval.crop_size / eval.stride")
@click.option("--flip", is_flag=True, help="test-time augmentation: average with the mirrored image")
@click.option(
    "--scales",
    help="test-time augmentation: comma-separated resize factors whose probabilities are averaged, e.g. 0.75,1,1.25",
)
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False),
    help="backbone file for checkpoints saved without their frozen backbone",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[default: the run's device]")
@click.option("--json", "as_json", is_flag=True, help="print labels.json's content")
def predict_command(
    images: tuple[str, ...],
    checkpoint: str,
    labels: str | None,
    output: str,
    slide: bool,
    flip: bool,
    scales: str | None,
    backbone_weights: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Segment image files with a trained checkpoint; optionally with a new label list (open vocabulary)."""
    names = parse_labels(labels) if labels is not None else None
    factors = parse_scales(scales) if scales is not None else (1.0,)
    summary = predict_images(
        checkpoint,
        images,
        output,
        labels=names,
        slide=slide,
        flip=flip,
        scales=factors,
        backbone_weights=backbone_weights,
        device=device,
    )
    if as_json:
        from vltk.engine.report import to_json

        click.echo(to_json(summary))
    else:
        click.echo(
            f"{len(summary['images'])} image(s), {len(summary['labels'])} labels -> {output} "
            "(<name>.png class indices, <name>_overlay.png, labels.json)"
        )
