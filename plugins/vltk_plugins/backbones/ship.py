"""Making a file shippable as ``builtin:<name>``: fp16 safetensors in the backbone's own layout, its record, and
the embedding of a fixed image that tests compare against.

``python -m vltk_plugins.backbones.ship runs/pretrain/open_clip.pt --name vltk-tiny-clip --reproduce "vltk
pretrain ..."`` loads the file into the backbone it is meant for (any layout ``backbone.pretrained`` reads, so a
file that does not load strictly is refused here, not on a user's machine), writes the weights as fp16
safetensors beside the other shipped files, measures the global image embedding of one fixed synthetic scene from
the written file, and writes the record (sha256 computed from the written bytes). fp16 halves the package; the
recorded embedding is of the fp16 weights, so the check compares like with like.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vltk.api import UserError
from vltk_plugins.backbones.clip_resnet.model import build_clip_resnet
from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit, build_eva02
from vltk_plugins.backbones.shipped import SHIPPED_DIR, write_record

#: The largest file the package ships (the issue's budget for the tiny foundation).
MAX_SHIPPED_BYTES = 25 * 2**20

#: The fixed image of the embedding check: scene 0 of seed 0 of the synthetic set, flat domain, 128 pixels.
CHECK_SCENE = {"seed": 0, "index": 0, "size": 128, "domain": "synthetic"}
#: How many leading dimensions of the unit-norm global embedding the record keeps.
CHECK_DIMS = 16


#: The backbones a foundation is shipped for: registered name -> builder (options dict in, module out).
BUILDERS = {"eva02": build_eva02, "clip-vit": build_clip_vit, "clip-resnet": build_clip_resnet}


def build_backbone(backbone: str, variant: str | None, pretrained: str | None) -> torch.nn.Module:
    """The backbone ``backbone`` with ``pretrained`` loaded (quietly: missing optional parts warn)."""
    if backbone not in BUILDERS:
        raise UserError(f"cannot ship weights for backbone '{backbone}'; choose one of {', '.join(BUILDERS)}")
    options = {"pretrained": pretrained, **({"variant": variant} if variant else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BUILDERS[backbone](options).eval()


def check_embedding(model: torch.nn.Module) -> list[float]:
    """The first :data:`CHECK_DIMS` values of the unit-norm global embedding of :data:`CHECK_SCENE`."""
    from vltk_plugins.datasets.synthetic.render import render_scene

    scene = CHECK_SCENE
    image, _ = render_scene(scene["seed"], scene["index"], scene["size"], scene["domain"])
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div(255.0)[None]
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        global_embedding, _ = model.embed((x - mean) / std)
    unit = torch.nn.functional.normalize(global_embedding.float(), dim=-1)[0]
    return [round(float(value), 6) for value in unit[:CHECK_DIMS]]


def ship_weights(
    source: str,
    *,
    name: str,
    backbone: str,
    variant: str | None,
    summary: str = "",
    reproduce: str = "",
    evaluation: Mapping[str, Any] | None = None,
    folder: Path = SHIPPED_DIR,
    max_bytes: int = MAX_SHIPPED_BYTES,
) -> Path:
    """Write ``<folder>/<name>.safetensors`` (fp16) and ``<name>.json`` from ``source``; return the record."""
    model = build_backbone(backbone, variant, source)
    state = {
        key: (value.half() if value.is_floating_point() else value).detach().contiguous()
        for key, value in model.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.safetensors"
    partial = target.with_suffix(".safetensors.partial")
    save_file(state, str(partial))
    if partial.stat().st_size > max_bytes:
        size = partial.stat().st_size / 2**20
        partial.unlink()
        raise UserError(f"'{source}' is {size:.1f} MB in fp16, over the {max_bytes / 2**20:.0f} MB shipping budget")
    partial.chmod(0o644)  # safetensors writes owner-only; a packaged file is read by every user
    partial.replace(target)
    check = {
        "scene": CHECK_SCENE,
        "dims": CHECK_DIMS,
        "values": check_embedding(build_backbone(backbone, variant, str(target))),
    }
    return write_record(
        target,
        name=name,
        backbones=(backbone,),
        variant=variant,
        summary=summary,
        reproduce=reproduce,
        evaluation=evaluation,
        check=check,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the weights file (any layout backbone.pretrained reads)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--backbone", default="eva02")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--summary", default="")
    parser.add_argument("--reproduce", default="", help="the exact command that made the source file")
    parser.add_argument("--evaluation", default="{}", help="JSON object of the file's measured numbers")
    parser.add_argument("--folder", default=str(SHIPPED_DIR))
    args = parser.parse_args()
    record = ship_weights(
        args.source,
        name=args.name,
        backbone=args.backbone,
        variant=args.variant,
        summary=args.summary,
        reproduce=args.reproduce,
        evaluation=json.loads(args.evaluation),
        folder=Path(args.folder),
    )
    print(f"wrote {record}")


if __name__ == "__main__":
    main()
