"""Did a `vltk pretrain` run reproduce a shipped foundation? Its evaluation against the record's, within noise.

A shipped record (``vltk_plugins/backbones/builtin/<name>.json``) holds the zero-shot evaluation of the run that
made it and the embedding of one fixed scene. This script reads a run folder made with the record's reproduction
command and compares:

- every zero-shot mean (retrieval R@1, condition and object accuracy, object AUC over the six named domains)
  against the record's, with the noise of a proportion measured on that many validation images
  (``2 * sqrt(p (1 - p) / n)``, n = images per domain x domains): a difference inside it is "within noise";
- the fixed scene's embedding from the run's ``open_clip.pt`` against the recorded one (the record's is of the
  fp16 file, so a bit-identical run still differs by fp16 rounding, about 1e-3).

    OMP_NUM_THREADS=2 vltk pretrain --output runs/pretrain-repro
    python benchmarks/pretrain_reproduce.py runs/pretrain-repro --name vltk-tiny-clip

Writes JSON (default ``benchmarks/results/pretrain_reproduce_cpu.json``) and prints one line per metric.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from vltk_kernels.benchmarking.provenance import fail, result_header, write_result
from vltk_plugins.backbones.shipped import SHIPPED_DIR

#: The zero-shot means a record keeps.
METRICS = ("r1", "condition_acc", "object_acc", "object_auc")


def run_means(run: Path) -> tuple[dict[str, float], int]:
    """The run's final zero-shot means over its domains, and how many validation images they rest on."""
    try:
        final = json.loads((run / "metrics.json").read_text())["final"]["domains"]
    except (OSError, ValueError, KeyError, TypeError):
        fail(f"{run / 'metrics.json'} holds no finished pretraining results; finish the run (vltk train --resume)")
    means = {metric: sum(domain[metric] for domain in final.values()) / len(final) for metric in METRICS}
    return means, sum(int(domain.get("images", 0)) for domain in final.values())


def noise(value: float, images: int) -> float:
    """Twice the standard error of a proportion ``value`` measured on ``images`` samples."""
    return 2.0 * math.sqrt(max(value * (1.0 - value), 1e-12) / max(images, 1))


def embedding_difference(run: Path, record: dict[str, Any]) -> float:
    """Largest difference between the run's fixed-scene embedding and the recorded one (the same dimensions)."""
    from vltk_plugins.backbones.ship import build_backbone, check_embedding

    weights = run / "open_clip.pt"
    if not weights.is_file():
        fail(f"{weights} is missing; a finished `vltk pretrain` run writes it")
    values = check_embedding(build_backbone(record["backbones"][0], record.get("variant"), str(weights)))
    return max(abs(a - b) for a, b in zip(values, record["check"]["values"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run folder of the reproduction")
    parser.add_argument("--name", default="vltk-tiny-clip", help="the shipped record to compare against")
    parser.add_argument("--json", default="benchmarks/results/pretrain_reproduce_cpu.json")
    args = parser.parse_args()
    record_file = SHIPPED_DIR / f"{args.name}.json"
    if not record_file.is_file():
        shipped = sorted(path.stem for path in SHIPPED_DIR.glob("*.json"))
        fail(f"no shipped record '{args.name}'; choose from {', '.join(shipped)}")
    record = json.loads(record_file.read_text())
    recorded = record["evaluation"]["zero_shot_mean"]
    means, images = run_means(args.run)
    comparison = {}
    for metric in METRICS:
        margin = noise(recorded[metric], images)
        difference = means[metric] - recorded[metric]
        comparison[metric] = {
            "shipped": recorded[metric],
            "reproduced": round(means[metric], 4),
            "difference": round(difference, 4),
            "noise": round(margin, 4),
            "within_noise": abs(difference) <= margin,
        }
        print(
            f"{metric:14s} shipped {100 * recorded[metric]:5.1f}  reproduced {100 * means[metric]:5.1f}  "
            f"difference {100 * difference:+5.1f}  noise ±{100 * margin:.1f}  "
            f"{'within noise' if comparison[metric]['within_noise'] else 'OUTSIDE noise'}"
        )
    embedding = embedding_difference(args.run, record)
    print(f"fixed-scene embedding: largest difference {embedding:.2e} (fp16 rounding is about 1e-3)")
    payload = {
        **result_header("pretrain_reproduce", torch.device("cpu")),
        "record": args.name,
        "reproduce": record.get("reproduce"),
        "run": str(args.run),
        "validation_images": images,
        "zero_shot_mean": comparison,
        "all_within_noise": all(entry["within_noise"] for entry in comparison.values()),
        "check_embedding_max_difference": embedding,
    }
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
