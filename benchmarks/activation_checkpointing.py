"""Activation checkpointing: peak training-step memory and step time with and without it, in one process.

The model is a Rein run (EVA02 backbone with Rein's hooks, Mask2Former head), measured four ways: nothing
checkpointed, the backbone (``backbone.grad_checkpointing``: each block recomputed together with its Rein hook),
the decoder (``decoder.grad_checkpointing``: every deformable-encoder and transformer-decoder layer), and both.
The peak is that of one forward + backward + AdamW step (:mod:`train_memory`, after a warm-up step; on CPU the
``PeakTracker`` storage accounting, on CUDA the allocator's peak); times are medians of ``--timed-steps`` more
steps, timed round-robin over the four models so that a load change on a shared machine hits all of them alike.
Ratios are against the run without checkpointing. Gradients are identical either way
(``tests/plugins/common/test_grad_checkpointing.py``); only memory and time are measured here.

    OMP_NUM_THREADS=1 python benchmarks/activation_checkpointing.py     # eva02-small, 256^2, batch 2, CPU
    python benchmarks/activation_checkpointing.py --variant large --size 512 --batch 4 --device cuda
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import torch
from train_memory import build_run, interleaved_seconds, prepare_step, train_step_memory

from vltk_kernels.benchmarking.provenance import result_header, write_result

#: what is checkpointed -> the overrides that do it
MODES = {
    "none": [],
    "backbone": ["backbone.grad_checkpointing=true"],
    "decoder": ["decoder.grad_checkpointing=true"],
    "both": ["backbone.grad_checkpointing=true", "decoder.grad_checkpointing=true"],
}


def build(mode: str, args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    overrides = [f"backbone.variant={args.variant}", f"dataset.size={args.size}", *MODES[mode]]
    if args.variant in ("tiny", "small"):  # paper widths would dwarf a tiny backbone; keep the head proportionate
        overrides += ["decoder.hidden_dim=128", "decoder.enc_ffn=512", "decoder.dec_ffn=1024", "adapter.query_dims=128"]
    return build_run({"backbone": "eva02", "adapter": "rein", "decoder": "mask2former"}, overrides)


def measure(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Peak memory of each mode's step after a warm-up (one model at a time), then the step times, interleaved."""
    rows = []
    for mode in MODES:
        model, run = build(mode, args)
        rows.append(
            {"checkpointed": mode, **train_step_memory(model, run, args.batch, args.size, args.precision, device)}
        )
        del model
        gc.collect()
    if args.timed_steps:
        steps = {}
        for mode in MODES:
            model, run = build(mode, args)
            steps[mode] = prepare_step(model, run, args.batch, args.size, args.precision, device)
            steps[mode]()  # warm-up: optimizer state, allocator, autocast caches
        seconds = interleaved_seconds(steps, args.timed_steps)
        for row in rows:
            row["step_seconds"] = seconds[row["checkpointed"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="small", help="eva02 variant (tiny, small, base, large)")
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--timed-steps", type=int, default=3, help="steps timed per mode, round-robin (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="default benchmarks/results/activation_checkpointing_<dev>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = measure(args, device)
    base = rows[0]
    for row in rows:
        row["extra_ratio_vs_none"] = row["peak_extra_bytes"] / base["peak_extra_bytes"]
        row["total_ratio_vs_none"] = row["peak_total_bytes"] / base["peak_total_bytes"]
        if row.get("step_seconds") and base.get("step_seconds"):
            row["time_ratio_vs_none"] = row["step_seconds"] / base["step_seconds"]
    payload = {
        **result_header("activation_checkpointing", device),
        "settings": {
            "model": f"eva02-{args.variant} + rein + mask2former",
            "size": args.size,
            "batch": args.batch,
            "precision": args.precision,
            "memory": base["memory_method"],
        },
        "results": rows,
    }
    print(f"activation checkpointing, {payload['settings']['model']}, {args.batch}x3x{args.size}^2, {args.precision}")
    print(f"  {payload['device']}; {base['memory_method']}")
    print(f"{'checkpointed':12s} {'extra MB':>9s} {'vs none':>8s} {'total MB':>9s} {'vs none':>8s} {'time':>7s}")
    for r in rows:
        time_ratio = r.get("time_ratio_vs_none")
        print(
            f"{r['checkpointed']:12s} {r['peak_extra_bytes'] / 2**20:>9.1f} {r['extra_ratio_vs_none']:>7.2f}x "
            f"{r['peak_total_bytes'] / 2**20:>9.1f} {r['total_ratio_vs_none']:>7.2f}x "
            f"{'' if time_ratio is None else f'{time_ratio:.2f}x':>7s}"
        )
    write_result(args.json or f"benchmarks/results/activation_checkpointing_{device.type}.json", payload)


if __name__ == "__main__":
    main()
