"""What `vltk pretrain` buys: zero-shot, frozen-feature linear probe and a short fine-tune, each against random init.

Issue 14 asks whether the embedded foundation is worth anything before the defaults use it. For each pretraining
variant (the ``clip-contrastive`` head's dense objective: ``align``, ``mim``, ``none``...) this script

1. pretrains the ``pretrain`` recipe for a small budget (or takes ``--foundation FILE``),
2. measures zero-shot retrieval R@1 and condition/object classification per named domain (the pretraining
   metric) for the result and for the same model at random init,
3. fits a linear probe (BatchNorm + 1x1 conv, DINOv2's protocol) on frozen stride-16 features of the tiny EVA02
   on the ``synthetic`` source domain and reports mIoU per domain, pretrained vs random,
4. fine-tunes the default recipe for a few iterations from the foundation and from random weights.

Numbers are ratios against random init in the same process and settings, never asserted in tests. Writes JSON
(default ``benchmarks/results/pretrain_probe_cpu.json``). Budgets are small on purpose (one core):

    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --variants align none --pretrain-iters 240
    python benchmarks/pretrain_probe.py --foundation runs/pretrain/open_clip.pt --variants given
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: The dense-objective settings of each variant (options of the ``clip-contrastive`` head).
VARIANTS: dict[str, dict[str, float]] = {
    "align": {"decoder.align_weight": 1.0, "decoder.mim_weight": 0.0},
    "mim": {"decoder.align_weight": 0.0, "decoder.mim_weight": 1.0},
    "align+mim": {"decoder.align_weight": 1.0, "decoder.mim_weight": 1.0},
    "none": {"decoder.align_weight": 0.0, "decoder.mim_weight": 0.0},
}


def pretrain(variant: str, args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """Run the ``pretrain`` recipe with ``variant``'s objective; ``(open_clip.pt, {wall_s, final results})``."""
    import vltk

    out = work / f"pretrain-{variant}"
    overrides = {
        **VARIANTS[variant],
        "train.iters": args.pretrain_iters,
        "train.batch_size": args.batch_size,
        "train.warmup_iters": max(args.pretrain_iters // 12, 1),
        "train.lr": args.lr,
        "train.eval_interval": args.pretrain_iters,
        "train.checkpoint_interval": args.pretrain_iters,
        "dataset.num_val": args.num_val,
        "dataset.size": args.size,
    }
    start = time.perf_counter()
    results = vltk.train("pretrain", output=out, overrides=overrides)
    return out / "open_clip.pt", {"wall_s": time.perf_counter() - start, "overrides": overrides, "results": results}


def zero_shot(foundation: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining metric per named domain for the model with ``foundation`` (None: random init)."""
    from vltk.config import build_config
    from vltk.engine.evaluation import evaluate
    from vltk.pipeline import as_resolved_run, build_data_source, build_model
    from vltk.plugins import get_plugin_manager
    from vltk.tasks import get_task

    torch.manual_seed(0)
    overrides = [f"dataset.num_val={args.num_val}", f"dataset.size={args.size}"]
    overrides.append(f"backbone.pretrained={foundation}" if foundation else "backbone.pretrained=null")
    run = as_resolved_run(build_config("pretrain", overrides=overrides, recipe_dirs=get_plugin_manager().recipe_dirs()))
    source = build_data_source(run)
    model = build_model(run)
    results = evaluate(model, source, get_task("pretrain"), run.config.eval, torch.device("cpu"))
    keys = ("r1", "condition_acc", "object_acc", "object_auc")
    return {
        "domains": {d: {k: e[k] for k in keys if k in e} for d, e in results["domains"].items()},
        "mean": {k: sum(e[k] for e in results["domains"].values()) / len(results["domains"]) for k in keys},
    }


def _features(backbone: nn.Module, split: Any, count: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen pyramid level ``level`` and labels of the first ``count`` items of ``split``."""
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    feats, labels = [], []
    with torch.no_grad():
        for start in range(0, count, 16):
            items = [split[i] for i in range(start, min(start + 16, count))]
            images = torch.stack([item["image"] for item in items]).float().div_(255.0)
            feats.append(backbone.forward_features((images - mean) / std)[level])
            labels.append(torch.stack([item["label"] for item in items]))
    return torch.cat(feats), torch.cat(labels)


def linear_probe(foundation: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """BatchNorm + 1x1 conv on frozen stride-16 features, trained on the source domain: mIoU per domain."""
    from vltk.engine.metrics import ConfusionMatrix
    from vltk_plugins.backbones.open_clip_vit.model import build_eva02
    from vltk_plugins.datasets.synthetic.dataset import SyntheticScenes
    from vltk_plugins.datasets.synthetic.options import SyntheticOptions

    torch.manual_seed(0)
    backbone = build_eva02({"variant": "tiny", "pretrained": str(foundation) if foundation else None}).eval()
    source = SyntheticScenes(SyntheticOptions(size=args.probe_size, num_train=args.probe_train, num_val=args.num_val))
    level = 2  # stride 16: the ViT's own patch grid
    train_x, train_y = _features(backbone, source.split("train", "synthetic"), args.probe_train, level)
    classes = len(source.classes)
    head = nn.Sequential(nn.BatchNorm2d(train_x.shape[1]), nn.Conv2d(train_x.shape[1], classes, 1))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.probe_epochs):
        for batch in torch.randperm(len(train_x), generator=generator).split(32):
            logits = F.interpolate(head(train_x[batch]), size=train_y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, train_y[batch], ignore_index=source.ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    domains = {}
    for domain in source.domains:
        val_x, val_y = _features(backbone, source.split("val", domain), args.num_val, level)
        matrix = ConfusionMatrix(classes, source.ignore_index)
        with torch.no_grad():
            logits = F.interpolate(head(val_x), size=val_y.shape[-2:], mode="bilinear", align_corners=False)
        matrix.update(logits.argmax(1), val_y)
        domains[domain] = matrix.miou()
    targets = [value for domain, value in domains.items() if domain != "synthetic"]
    return {"miou": domains, "target_avg": sum(targets) / len(targets)}


def finetune(foundation: Path | None, args: argparse.Namespace, work: Path, name: str) -> dict[str, Any]:
    """The default recipe (tiny EVA02 + FPN, full fine-tuning) for ``--finetune-iters`` from ``foundation``."""
    import vltk

    overrides = {
        "train.iters": args.finetune_iters,
        "train.eval_interval": args.finetune_iters,
        "train.checkpoint_interval": args.finetune_iters,
        "train.warmup_iters": max(args.finetune_iters // 10, 1),
        "dataset.num_val": args.num_val,
        "eval.overlays": 0,
        "backbone.pretrained": str(foundation) if foundation else None,
    }
    start = time.perf_counter()
    results = vltk.train(None, output=work / f"finetune-{name}", overrides=overrides)
    summary = results["summary"]
    return {
        "wall_s": time.perf_counter() - start,
        "miou": {d: e["miou"] for d, e in results["domains"].items()},
        "source": summary["source"],
        "target_avg": summary["target_avg"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["align"], help=f"of {list(VARIANTS)}, or 'given'")
    parser.add_argument("--foundation", type=Path, help="an open_clip.pt to measure instead of pretraining")
    parser.add_argument("--pretrain-iters", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=96, help="pretraining and zero-shot image size")
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--probe-train", type=int, default=192)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--finetune-iters", type=int, default=150)
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("runs/pretrain_probe"))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pretrain_probe_cpu.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "conditions": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared (loaded machine)",
            "torch": torch.__version__,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "random_init": {"zero_shot": zero_shot(None, args), "linear_probe": linear_probe(None, args)},
        "variants": {},
    }
    if not args.skip_finetune:
        report["random_init"]["finetune"] = finetune(None, args, args.work, "random")
    for variant in args.variants:
        entry: dict[str, Any] = {}
        if variant == "given":
            foundation = args.foundation
        else:
            foundation, entry["pretrain"] = pretrain(variant, args, args.work)
        entry["zero_shot"] = zero_shot(foundation, args)
        entry["linear_probe"] = linear_probe(foundation, args)
        if not args.skip_finetune:
            entry["finetune"] = finetune(foundation, args, args.work, variant)
        report["variants"][variant] = entry
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))  # after every variant: partial results
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=1, default=float)[:4000])


if __name__ == "__main__":
    main()
