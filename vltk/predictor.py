"""The notebook API: ``vltk.load(checkpoint)`` gives a ready segmentation model with ``predict(images)``.

What a researcher coming from Hugging Face pipelines or mmseg's ``inference_model`` expects: one call that rebuilds
the model exactly as ``vltk eval`` does (the checkpoint's recorded configuration, its weights, the backbone file
of a backbone-less checkpoint checked by fingerprint), then label maps for whatever images are at hand — NumPy
arrays, PIL images, tensors or file paths, of any size, one or many — with the sliding-window, flip and
multi-scale options of evaluation. ``vltk predict`` writes files through this same object, so the two agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vltk.errors import UserError

#: What :meth:`Predictor.predict` accepts as one image.
IMAGE_KINDS = "a file path, a PIL image, a uint8 array [H, W, 3], or a tensor [3, H, W] (float in 0..1 or uint8)"


# ------------------------------------------------------------------------------------------ labels and images


def label_color(name: str) -> tuple[int, int, int]:
    """A colour for a label name that is the same in every run (derived from a hash of the name)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    # keep colours away from black (ignored pixels) so every label stays visible
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


def palette_for(labels: Sequence[str], known: Sequence[str], known_palette: Sequence[Sequence[int]] | None) -> list:
    """Training colours for training classes (when the checkpoint recorded them), hashed colours for the rest."""
    colors = dict(zip(known, known_palette, strict=False)) if known_palette else {}
    return [tuple(int(c) for c in colors[name]) if name in colors else label_color(name) for name in labels]


def image_error(path: Path, error: Exception) -> UserError:
    """One line for a file PIL refuses; a decompression bomb (a header claiming billions of pixels) says so."""
    from PIL import Image

    if isinstance(error, Image.DecompressionBombError):
        return UserError(
            f"image '{path}' claims more pixels than PIL decodes safely ({error}); resize it to a real image size"
        )
    return UserError(f"image '{path}' cannot be read as an image ({type(error).__name__}: {error})")


def read_image(path: Path) -> Any:
    """RGB uint8 array ``[H, W, 3]``; anything PIL cannot decode is an error naming the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise image_error(path, error) from None


def open_vocabulary_predict(model: Any, labels: list[str]) -> Callable[[Any], Any]:
    """Switch ``model`` to ``labels``; return the function that maps images to scores over them.

    An open-vocabulary decoder (LSeg) keeps the model's own ``predict`` as long as no K-wide score map is appended
    to its input; otherwise the decoder is tied to the training classes and the model's pixel-text score map
    (``predict_open_vocabulary``: cosine / temperature) classifies instead.
    """
    if getattr(model, "prompter", None) is None:
        raise UserError(
            "--labels needs a model with a prompter (text embeddings for the new names); this checkpoint has none. "
            "Train with e.g. --prompter clip-template --decoder lseg, or leave --labels out"
        )
    model.set_class_names(list(labels))
    follows_text = getattr(model.decoder, "open_vocabulary", False) and model.score_concat_index is None
    return model.predict if follows_text else model.predict_open_vocabulary


def _as_tensor(image: Any) -> Any:
    """One image -> float tensor ``[1, 3, H, W]`` in 0..1 (RGB); anything else is a :class:`UserError`."""
    import numpy as np
    import torch

    if isinstance(image, (str, Path)):
        image = read_image(Path(image))
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UserError(f"an image array must be [H, W, 3] (RGB), got shape {image.shape}; pass {IMAGE_KINDS}")
        floating = image.dtype.kind == "f"
        tensor = torch.from_numpy(np.array(image[:, :, :3], copy=True)).permute(2, 0, 1)
        return (tensor.float() if floating else tensor.float() / 255.0).unsqueeze(0)
    if isinstance(image, torch.Tensor):
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[1] != 3:
            raise UserError(f"an image tensor must be [3, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    raise UserError(f"cannot read a {type(image).__name__} as an image; pass {IMAGE_KINDS}")


class Predictor:
    """A trained segmentation model with its label set, ready to predict (built by :func:`load`).

    ``model`` is the :class:`~vltk.models.DensePredictor` (eval mode, on ``device``), ``class_names`` and
    ``palette`` what the checkpoint recorded, ``run`` the resolved configuration it was trained with.
    """

    def __init__(
        self, model: Any, run: Any, class_names: list[str], palette: list[tuple[int, int, int]], device: Any
    ) -> None:
        self.model = model
        self.run = run
        self.device = device
        self.trained_names = list(class_names)
        self.trained_palette = list(palette)
        self.class_names = list(class_names)
        self.palette = list(palette)
        self._predict = model.predict
        #: where the scores come from: the trained ``"decoder"``, or the ``"pixel-text score map"`` (new labels)
        self.scores_from = "decoder"

    def set_labels(self, labels: Sequence[str]) -> None:
        """Segment with another label list from now on (open vocabulary; needs a model with a prompter).

        An open-vocabulary decoder (LSeg) keeps predicting; a decoder tied to the training classes is bypassed
        for the model's pixel-text score map. Training classes keep their colours, new names get hashed ones.
        """
        self._predict = open_vocabulary_predict(self.model, list(labels))
        self.scores_from = "decoder" if self._predict == self.model.predict else "pixel-text score map"
        self.class_names = list(labels)
        self.palette = palette_for(self.class_names, self.trained_names, self.trained_palette)

    def scores(self, image: Any, *, slide: bool = False, flip: bool = False, scales: Sequence[float] = (1.0,)) -> Any:
        """Class scores ``[B, K, H, W]`` (probabilities with flip/multi-scale, raw scores otherwise) of one image
        (or a ``[B, 3, H, W]`` batch of equal-sized ones) at its own size."""
        import torch

        from vltk.models.inference import inference

        tensor = _as_tensor(image).to(self.device)
        config = self.run.config.eval
        with torch.no_grad():
            result = inference(
                self._predict,
                tensor,
                mode="slide" if slide else "whole",
                crop_size=config.crop_size,
                stride=config.stride,
                flip=flip,
                scales=tuple(scales),
            )
        if result.shape[1] != len(self.class_names):
            raise UserError(
                f"the model predicted {result.shape[1]} classes for {len(self.class_names)} labels; its decoder "
                "does not follow the prompter's label list"
            )
        return result

    def predict(self, images: Any, *, slide: bool = False, flip: bool = False, scales: Sequence[float] = (1.0,)) -> Any:
        """Label maps: an ``int64`` array ``[H, W]`` of class indices into :attr:`class_names` for one image, a
        list of them for a list of images (each at its own size), ``[B, H, W]`` for a batched tensor.

        ``slide`` uses windows of the run's ``eval.crop_size``/``eval.stride``; ``flip`` and ``scales`` are
        test-time augmentation (probabilities of the mirrored / resized views averaged).
        """
        options = {"slide": slide, "flip": flip, "scales": scales}
        if isinstance(images, (list, tuple)):
            return [self.predict(image, **options) for image in images]
        labels = self.scores(images, **options).argmax(1).cpu().numpy()
        batched = hasattr(images, "dim") and images.dim() == 4
        return labels if batched else labels[0]


def load(checkpoint: str | Path, *, backbone_weights: str | Path | None = None, device: str | None = None) -> Predictor:
    """Rebuild a trained segmentation model from a vltk checkpoint (``best.pt``/``last.pt``/an export).

    ``backbone_weights`` is the backbone file of a checkpoint saved without its frozen backbone (default: the
    file recorded at training); ``device`` is ``cpu``, ``cuda`` or ``auto`` (default: the run's).
    """
    from vltk.cli.run import build_checkpoint_model, load_checkpoint_config
    from vltk.engine.trainer import pick_device
    from vltk.tasks import get_task

    state, run = load_checkpoint_config(checkpoint, (), str(backbone_weights) if backbone_weights else None)
    class_names = list(state.get("class_names") or [])
    if not class_names:
        raise UserError(f"checkpoint '{checkpoint}' records no class names; it was not written by `vltk train`")
    if not get_task(run.task).predicts_label_maps:
        raise UserError(
            f"checkpoint '{checkpoint}' is a {run.task} model; vltk.load gives label-map models (segmentation); "
            "evaluate it with `vltk eval --checkpoint ...`"
        )
    model = build_checkpoint_model(state, run, class_names, 255, source=f"checkpoint '{checkpoint}'")
    target = pick_device(device or run.config.device)
    palette = palette_for(class_names, class_names, state.get("palette"))
    return Predictor(model.to(target), run, class_names, palette, target)


__all__ = ["IMAGE_KINDS", "Predictor", "label_color", "load", "open_vocabulary_predict", "palette_for", "read_image"]
