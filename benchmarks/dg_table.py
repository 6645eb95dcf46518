"""The papers' tables in miniature: domain generalisation on the embedded synthetic benchmark, equal budgets.

Every entry trains on the flat "synthetic" source domain and evaluates on all six domains (the analogue of Rein's
Table 2/3: GTAV -> Cityscapes/BDD/Mapillary; CLIP the Gap's Table 1: daytime-sunny -> night/dusk/rain/fog), with
the same number of iterations and batch size, from the foundation given as ``--pretrained`` (by default the
shipped ``builtin:vltk-tiny-clip``) unless the entry says random init:

- backbone init: random vs the foundation (full fine-tuning, FPN; also with BEiT's layer-wise lr decay and with a
  10x lower backbone lr, which keep more of the foundation);
- adapters on the frozen foundation: ``frozen``, ``full``, ``lora``, ``vpt``, ``rein`` (FPN);
- decoders: Mask2Former with Rein's token-query link, and with full fine-tuning;
- text guidance: VLTSeg/DenseCLIP-style score maps, LSeg;
- on the CLIP ResNet foundation (``--pretrained-resnet``, by default the shipped ``builtin:vltk-tiny-clip-resnet``):
  DenseCLIP, and CLIP the Gap on ``synthetic-det`` with and without its augmenter.

Each entry is one ordinary run folder under ``--runs`` (``runs/dg/<entry>``): a finished entry is read back, an
interrupted one resumes (``vltk.train(resume=True)``), so the table can be built over several sessions and any
row re-checked with ``vltk eval --checkpoint runs/dg/<entry>/last.pt``. The JSON holds every domain's score and
the summary (source, target average, gap, rPD) and each row's foundation; ``--only`` replaces its rows in an
existing JSON of the same budget and keeps the others; ``--markdown`` prints the README table.

    OMP_NUM_THREADS=2 python benchmarks/dg_table.py                              # every entry, ~1 h on 2 cores
    python benchmarks/dg_table.py --only foundation-frozen,foundation-rein --iters 300
    python benchmarks/dg_table.py --smoke --runs /tmp/dg                         # seconds: the wiring only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vltk
from vltk.errors import UserError
from vltk_kernels.benchmarking.provenance import fail, result_header, write_result

#: A foundation's ``backbone.pretrained`` placeholder in an entry's overrides.
FOUNDATION = "{pretrained}"


@dataclass(frozen=True)
class Entry:
    """One row: a recipe (None: the default), its overrides, and what the row compares."""

    name: str
    group: str
    label: str
    recipe: str | None = None
    overrides: tuple[str, ...] = ()
    flags: dict[str, str] = field(default_factory=dict)


def on_foundation(name: str, group: str, label: str, *, recipe: str | None = None, **settings: Any) -> Entry:
    """An entry that starts from ``--pretrained``: its overrides gain ``backbone.pretrained``."""
    overrides = (f"backbone.pretrained={FOUNDATION}", *settings.pop("overrides", ()))
    return Entry(name, group, label, recipe=recipe, overrides=overrides, **settings)


SEGMENTATION_ENTRIES = (
    Entry("random-full", "init", "random init, full, FPN", overrides=("backbone.pretrained=null",)),
    on_foundation("foundation-full", "init", "foundation, full, FPN"),
    on_foundation(
        "foundation-full-layer-decay",
        "init",
        "foundation, full, layer decay 0.75, FPN",
        overrides=("adapter.layer_decay=0.75",),
    ),
    on_foundation(
        "foundation-full-low-lr",
        "init",
        "foundation, full, backbone lr x0.1, FPN",
        overrides=("train.lr=3.0e-5", "train.decoder_lr_mult=10.0"),
    ),
    on_foundation("foundation-frozen", "adapter", "frozen foundation, FPN", flags={"adapter": "frozen"}),
    on_foundation("foundation-lora", "adapter", "LoRA, FPN", flags={"adapter": "lora"}),
    on_foundation("foundation-vpt", "adapter", "VPT, FPN", flags={"adapter": "vpt"}),
    on_foundation(
        "foundation-rein",
        "adapter",
        "Rein, FPN",
        overrides=("adapter.link_token_to_query=false",),
        flags={"adapter": "rein"},
    ),
    on_foundation("foundation-rein-m2f", "decoder", "Rein + Mask2Former (token-query link)", recipe="rein/synthetic"),
    on_foundation(
        "foundation-full-m2f", "decoder", "full + Mask2Former", recipe="rein/synthetic", flags={"adapter": "full"}
    ),
    on_foundation("foundation-vltseg", "text", "VLTSeg (full + DenseCLIP text guidance)", recipe="vltseg/synthetic"),
    on_foundation("foundation-lseg", "text", "LSeg", recipe="lseg/synthetic"),
    Entry(
        "resnet-random-denseclip",
        "text",
        "DenseCLIP (CLIP ResNet, random init)",
        recipe="denseclip/synthetic",
        overrides=("backbone.pretrained=null",),
    ),
    Entry(
        "resnet-denseclip",
        "text",
        "DenseCLIP (CLIP ResNet foundation)",
        recipe="denseclip/synthetic",
        overrides=("backbone.pretrained={pretrained_resnet}",),
    ),
)

DETECTION_ENTRIES = (
    Entry(
        "clipgap-without",
        "detection",
        "CLIP the Gap detector, no augmenter",
        recipe="clip-gap/synthetic",
        overrides=("backbone.pretrained={pretrained_resnet}", "augmenters=[]"),
    ),
    Entry(
        "clipgap-with",
        "detection",
        "CLIP the Gap detector + augmenter",
        recipe="clip-gap/synthetic",
        overrides=("backbone.pretrained={pretrained_resnet}",),
    ),
)

ENTRIES = {entry.name: entry for entry in (*SEGMENTATION_ENTRIES, *DETECTION_ENTRIES)}
#: Entries whose decoder classifies with the text alone: also scored zero-shot with the held-out class names.
ZERO_SHOT_ENTRIES = ("foundation-lseg",)

#: ``--smoke``: the smallest run that still goes through every component (seconds per entry).
SMOKE = (
    "dataset.size=32",
    "dataset.num_train=4",
    "dataset.num_val=1",
    "train.batch_size=2",
    "train.warmup_iters=0",
    "eval.overlays=0",
)


def foundations(args: argparse.Namespace) -> dict[str, str]:
    """What fills an entry's ``{pretrained}`` and ``{pretrained_resnet}`` placeholders."""
    return {"pretrained": args.pretrained or "null", "pretrained_resnet": args.pretrained_resnet or "null"}


def foundation_of(entry: Entry, args: argparse.Namespace) -> str:
    """The weights an entry's backbone starts from (its ``backbone.pretrained`` override, else the recipe's)."""
    for item in entry.overrides:
        if item.startswith("backbone.pretrained="):
            return item.split("=", 1)[1].format(**foundations(args))
    return "the recipe's"


def merged_rows(path: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with the other entries of an earlier JSON at ``path`` of the same budget (iters, seed, smoke), in
    the table's order: ``--only`` re-runs some rows without dropping the rest."""
    budget = ("iters", "seed", "smoke")
    earlier: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if all(saved.get("settings", {}).get(key) == settings[key] for key in budget):
            earlier = {row["name"]: row for row in saved.get("results", []) if row.get("name") in ENTRIES}
    earlier.update({row["name"]: row for row in rows})
    return [earlier[name] for name in ENTRIES if name in earlier]


def entry_overrides(entry: Entry, args: argparse.Namespace) -> list[str]:
    """The entry's overrides with the foundation filled in, its component flags (whole sections, like
    ``--adapter frozen``) and the budget."""
    values = foundations(args)
    overrides = [f"{section}={{name: {name}}}" for section, name in entry.flags.items()]
    overrides += [item.format(**values) for item in entry.overrides]
    overrides += [f"train.iters={args.iters}", "train.eval_interval=0", f"seed={args.seed}"]
    if args.smoke:
        overrides += [item for item in SMOKE if not (entry.group == "detection" and item.startswith("dataset.size"))]
    return overrides


def run_entry(entry: Entry, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or read back) one entry and return its final results with the time it took."""
    out = Path(args.runs) / entry.name
    metrics = out / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        if saved.get("final"):
            return {**saved["final"], "seconds": saved.get("seconds"), "reused": True}
    began = time.perf_counter()
    overrides = entry_overrides(entry, args)
    if (out / "last.pt").is_file():
        results = vltk.train(output=out, resume=True)
    else:
        results = vltk.train(entry.recipe, output=out, overrides=overrides)
    seconds = time.perf_counter() - began
    if metrics.is_file():  # keep the time beside the trainer's record, for a later read-back
        saved = json.loads(metrics.read_text())
        saved["seconds"] = seconds
        metrics.write_text(json.dumps(saved, indent=2))
    return {**results, "seconds": seconds, "reused": False}


def renamed_miou(result: dict[str, Any], domain: str, renamed: list[str]) -> float:
    """Mean IoU (percent) over the renamed classes that the domain's scenes show (absent classes are NaN)."""
    ious = result["domains"][domain].get("iou", {})
    values = [ious.get(name) for name in renamed]
    present = [value for value in values if isinstance(value, float) and not math.isnan(value)]
    return 100.0 * sum(present) / len(present) if present else math.nan


def zero_shot(entry: Entry, args: argparse.Namespace, trained: dict[str, Any]) -> dict[str, Any]:
    """LSeg's open vocabulary in miniature: the trained entry evaluated again with every class that has a
    held-out synonym named by it (words met only in pretraining captions), against the training names."""
    from vltk.api import CITYSCAPES_CLASSES
    from vltk.cli.run import evaluate_checkpoint
    from vltk_plugins.datasets.synthetic.captions import held_out_class_names

    names = held_out_class_names()
    out = Path(args.runs) / entry.name / "zero_shot"
    if (out / "eval.json").is_file():
        held_out = json.loads((out / "eval.json").read_text())
    else:
        checkpoint = str(Path(args.runs) / entry.name / "last.pt")
        held_out, _, _ = evaluate_checkpoint(checkpoint, labels=names, output=str(out), progress=False)
    renamed = [cls for cls, name in zip(CITYSCAPES_CLASSES, names, strict=True) if cls != name]
    return {
        "labels": dict(zip(renamed, [names[CITYSCAPES_CLASSES.index(cls)] for cls in renamed], strict=True)),
        "domains": {
            domain: {
                "renamed_miou_training_names": renamed_miou(trained, domain, renamed),
                "renamed_miou_held_out_names": renamed_miou(held_out, domain, renamed),
                "miou_held_out_names": 100.0 * held_out["domains"][domain]["miou"],
            }
            for domain in trained["domains"]
        },
    }


def zero_shot_markdown(name: str, table: dict[str, Any]) -> str:
    """The README's zero-shot table: renamed classes' mIoU per domain, with training vs held-out names."""
    domains = list(table["domains"])
    lines = ["| " + " | ".join([f"{name}: renamed classes", *domains]) + " |", "|" + "---|" * (len(domains) + 1)]
    for key, label in (
        ("renamed_miou_training_names", "training names"),
        ("renamed_miou_held_out_names", "held-out words (zero-shot)"),
    ):
        lines.append("| " + " | ".join([label, *(f"{table['domains'][d][key]:.1f}" for d in domains)]) + " |")
    return "\n".join(lines)


def score_of(result: dict[str, Any], domain: str) -> float:
    entry = result["domains"].get(domain, {})
    value = entry.get("miou", entry.get("ap50", math.nan))
    return 100.0 * value if isinstance(value, float) else math.nan


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: source, every target, target average, rPD (scores in percent)."""
    domains = list(rows[0]["result"]["domains"]) if rows else []
    head = ["entry", "metric", *domains, "target avg", "rPD %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        result, summary = row["result"], row["result"]["summary"]
        metric = "AP50" if row["group"] == "detection" else "mIoU"
        cells = [row["label"], metric, *(f"{score_of(result, domain):.1f}" for domain in domains)]
        cells += [f"{100 * summary['target_avg']:.1f}", f"{summary['rpd_avg']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="builtin:vltk-tiny-clip", help="the foundation (file or builtin:)")
    parser.add_argument(
        "--pretrained-resnet",
        default="builtin:vltk-tiny-clip-resnet",
        help="the CLIP ResNet foundation of DenseCLIP and CLIP the Gap (file, builtin: or null)",
    )
    parser.add_argument("--iters", type=int, default=300, help="the equal budget of every entry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated entry names: " + ", ".join(ENTRIES))
    parser.add_argument("--runs", default="runs/dg", help="one run folder per entry (reused, resumed)")
    parser.add_argument("--smoke", action="store_true", help="32-pixel scenes, 4 images: checks the wiring only")
    parser.add_argument("--json", default="benchmarks/results/dg_table_cpu.json")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(ENTRIES)
    unknown = [name for name in names if name not in ENTRIES]
    if unknown:
        fail(f"unknown entries {unknown}; choose from {', '.join(ENTRIES)}")
    rows = []
    for name in names:
        entry = ENTRIES[name]
        print(f"[{name}] {entry.label}", flush=True)
        try:
            result = run_entry(entry, args)
        except UserError as error:
            fail(f"{name}: {error}")
        row = {
            "name": name,
            "group": entry.group,
            "label": entry.label,
            "pretrained": foundation_of(entry, args),
            "result": result,
        }
        if name in ZERO_SHOT_ENTRIES:
            row["zero_shot"] = zero_shot(entry, args, result)
        rows.append(row)
        summary = result["summary"]
        print(f"[{name}] source {100 * summary['source']:.1f}, target avg {100 * summary['target_avg']:.1f}")
    settings = {
        "pretrained": args.pretrained,
        "pretrained_resnet": args.pretrained_resnet,
        "iters": args.iters,
        "seed": args.seed,
        "smoke": args.smoke,
    }
    rows = merged_rows(Path(args.json), settings, rows)
    payload = {**result_header("dg_table", torch.device("cpu")), "settings": settings, "results": rows}
    write_result(args.json, payload)
    if args.markdown:
        print(markdown(rows))
        for row in rows:
            if "zero_shot" in row:
                print("\n" + zero_shot_markdown(row["label"], row["zero_shot"]))


if __name__ == "__main__":
    main()
