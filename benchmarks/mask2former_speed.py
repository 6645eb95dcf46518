"""vltk's Mask2Former head against Hugging Face transformers' with the same weights: forward + loss + backward.

Both heads are built at the paper's widths (``Mask2FormerConfig`` defaults: hidden 256, 6 deformable encoder
layers with a 1024-wide FFN, 9 masked-attention decoder layers (``decoder_layers=10`` counts the first
prediction too) with a 2048-wide FFN, 100 queries, 8 heads, 12,544 loss points) on a pyramid of strides 4/8/16/32
(``--channels`` per level, ViT-B's 768 by default). Hugging Face's side is the whole model minus the backbone:
``Mask2FormerPixelDecoder`` + ``Mask2FormerTransformerModule`` + ``class_predictor`` + ``Mask2FormerLoss``. vltk's
weights are copied into it through the release map (``HF_RULES`` of the ``mask2former`` plugin, applied to the
Hugging Face names and read backwards), and every class and mask logit of the 10 predictions must agree to 1e-5
before anything is timed.

Two timed steps, interleaved (vltk, HF, HF, vltk, ...) in one process, median of ``--repeats``; the ratio is of
process CPU time (one thread: the time other jobs held the core is left out), wall-clock ratios are kept too:

- ``loss``: forward, each library's own set loss on identical targets (blocky label maps, one mask per class
  present), backward. The losses are the same formulas but draw their random points in a different order (vltk
  per image, HF per batch), so their values differ by sampling noise (both are printed);
- ``fixed``: forward and a backward of one fixed random linear function of every prediction, so the gradients of
  both are compared too (1e-5 relative to their scale).

The pyramid requires grad (a Rein-adapted backbone trains through it; ``--frozen-features`` for a frozen one).
``--stage before|after`` stores this run's figures and vltk's ``torch.profiler`` top entries under that name in the
JSON, keeping the other stage's.

    /tmp/hfvenv/bin/python benchmarks/mask2former_speed.py --threads 1 --stage after   # the issue's shape
    /tmp/hfvenv/bin/python benchmarks/mask2former_speed.py --tiny --json /tmp/m2f.json   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from decoder_step import blocky_labels
from torch import Tensor, nn

from vltk_kernels.benchmarking.provenance import describe_device, fail, git_commit
from vltk_plugins.common.releases import apply_keymap
from vltk_plugins.decoders.mask2former.head import Mask2Former
from vltk_plugins.decoders.mask2former.release import HF_RULES, HF_TITLE

TOLERANCE = 1e-5


def hf_modules() -> Any:
    try:
        from transformers.models.mask2former import configuration_mask2former, modeling_mask2former
    except ImportError:
        fail("Hugging Face transformers (this benchmark's baseline) is not installed; pip install transformers")
    return configuration_mask2former, modeling_mask2former


class HFHead(nn.Module):
    """Hugging Face's Mask2Former minus the backbone, its submodules under the names its checkpoints use."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        configuration, modeling = hf_modules()
        config = configuration.Mask2FormerConfig(
            num_labels=args.classes,
            hidden_dim=args.hidden,
            feature_size=args.hidden,
            mask_feature_size=args.hidden,
            encoder_layers=args.enc_layers,
            encoder_feedforward_dim=args.enc_ffn,
            decoder_layers=args.dec_layers + 1,
            dim_feedforward=args.dec_ffn,
            num_attention_heads=args.heads,
            num_queries=args.queries,
            train_num_points=args.points,
        )
        self.model = nn.Module()
        self.model.pixel_level_module = nn.Module()
        self.model.pixel_level_module.decoder = modeling.Mask2FormerPixelDecoder(config, [args.channels] * 4)
        self.model.transformer_module = modeling.Mask2FormerTransformerModule(args.hidden, config)
        self.class_predictor = nn.Linear(args.hidden, args.classes + 1)
        self.weight_dict = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
        self.criterion = modeling.Mask2FormerLoss(config, self.weight_dict)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        pixel = self.model.pixel_level_module.decoder(features)
        out = self.model.transformer_module(pixel.multi_scale_features, pixel.mask_features, output_hidden_states=True)
        classes = [self.class_predictor(h.transpose(0, 1)) for h in out.intermediate_hidden_states]
        return classes, list(out.masks_queries_logits)

    def loss(self, classes: list[Tensor], masks: list[Tensor], labels: Tensor) -> Tensor:
        """``Mask2FormerForUniversalSegmentation.get_loss_dict`` + ``get_loss`` on semantic targets."""
        class_labels = [torch.unique(label) for label in labels]
        mask_labels = [
            (label[None] == present[:, None, None]).float() for label, present in zip(labels, class_labels, strict=True)
        ]
        aux = [
            {"masks_queries_logits": m, "class_queries_logits": c}
            for m, c in zip(masks[:-1], classes[:-1], strict=True)
        ]
        losses = self.criterion(masks[-1], classes[-1], mask_labels, class_labels, aux)
        for key, weight in self.weight_dict.items():
            for name, value in losses.items():
                if key in name:
                    value *= weight
        return sum(losses.values())


def copy_weights(vltk: Mask2Former, hf: HFHead) -> int:
    """vltk's weights into ``hf``: the release map sends each Hugging Face key to its vltk key, read backwards
    (``q|k|v_proj`` are the thirds of ``in_proj_*``). Returns the number of tensors copied; every one must be."""
    hf_state = hf.state_dict()
    mapped = apply_keymap(hf_state, HF_RULES, title=HF_TITLE)
    vltk_state = {f"decoder.{key}": value for key, value in vltk.state_dict().items()}
    if set(mapped.renamed) != set(vltk_state):
        raise RuntimeError(f"key sets differ: {sorted(set(mapped.renamed) ^ set(vltk_state))[:6]}")
    copied = 0
    with torch.no_grad():
        for vltk_key, hf_keys in mapped.renamed.items():
            names = hf_keys.split("+")
            for name, piece in zip(names, vltk_state[vltk_key].chunk(len(names)), strict=True):
                hf_state[name].copy_(piece)
                copied += 1
    missing = set(hf_state) - {n for keys in mapped.renamed.values() for n in keys.split("+")} - set(mapped.dropped)
    if missing:
        raise RuntimeError(f"Hugging Face tensors left uncopied: {sorted(missing)[:6]}")
    return copied


def perturb_offsets(model: nn.Module, std: float = 0.05) -> None:
    """Shift the deformable attention's initial sampling offsets off whole pixels, as training does.

    At init every sample lands exactly on a pixel centre, where bilinear sampling's gradient with respect to the
    location jumps; vltk and HF compute the reference points in different (equally exact) ways, so a last-bit
    difference there picks the other side of the jump and the offset gradients differ by O(1).
    """
    generator = torch.Generator().manual_seed(3)
    for name, parameter in model.named_parameters():
        if name.endswith("sampling_offsets.bias"):
            parameter.add_(std * torch.randn(parameter.shape, generator=generator))


def relative_error(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def fixed_backward_weights(shapes: list[torch.Size], seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def fixed_objective(outputs: list[Tensor], weights: list[Tensor]) -> Tensor:
    return sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))


def compare(vltk: Mask2Former, hf: HFHead, features: list[Tensor], *, with_gradients: bool) -> tuple[float, float, str]:
    """Largest relative difference of the outputs and (``with_gradients``) of the fixed objective's gradients
    (parameters, and the pyramid when it requires grad), with the worst gradient's name.

    Gradients are compared in float64: a float32 pre-activation that lands on a ReLU's kink in one library and a
    rounding error above it in the other flips one unit's gradient (seen at these widths), which is a tie, not a
    difference of formulas.
    """
    out = vltk(features)
    ours = [*out["all_mask_cls"], *out["all_mask_pred"]]
    classes, masks = hf(features)
    theirs = [*classes, *masks]
    output_error = max(relative_error(a, b) for a, b in zip(ours, theirs, strict=True))
    if not with_gradients:
        return output_error, 0.0, ""
    weights = [w.to(ours[0].dtype) for w in fixed_backward_weights([o.shape for o in ours], seed=2)]
    inputs = [f for f in features if f.requires_grad]
    names = [f"decoder.{name}" for name, _ in vltk.named_parameters()]
    grads_vltk = torch.autograd.grad(fixed_objective(ours, weights), [*vltk.parameters(), *inputs], allow_unused=True)
    hf_params = dict(hf.named_parameters())
    mapped = apply_keymap(dict(hf.state_dict()), HF_RULES, title=HF_TITLE).renamed
    parts = [mapped[name].split("+") for name in names]
    tracked = [hf_params[key] for keys in parts for key in keys]
    grads_hf = list(torch.autograd.grad(fixed_objective(theirs, weights), [*tracked, *inputs], allow_unused=True))
    joined: list[Tensor | None] = []
    for keys in parts:
        pieces, grads_hf = grads_hf[: len(keys)], grads_hf[len(keys) :]
        joined.append(None if pieces[0] is None else torch.cat(pieces))
    joined += grads_hf
    errors = {
        name: relative_error(a, b)
        for name, a, b in zip([*names, *(f"features.{i}" for i in range(len(inputs)))], grads_vltk, joined, strict=True)
        if a is not None
    }
    worst = max(errors, key=errors.__getitem__)
    return output_error, errors[worst], worst


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def profile_top(step: Callable[[], None], rows: int) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    return [
        {
            "name": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in averages[:rows]
    ]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side; the pyramid is size/4 .. size/32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=768, help="pyramid width of every level")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--enc-layers", type=int, default=6)
    parser.add_argument("--enc-ffn", type=int, default=1024)
    parser.add_argument("--dec-layers", type=int, default=9, help="decoder layers (HF's decoder_layers minus one)")
    parser.add_argument("--dec-ffn", type=int, default=2048)
    parser.add_argument("--points", type=int, default=12544, help="loss and matching points per mask")
    parser.add_argument("--cell", type=int, default=32, help="label cell size (pixels) of the blocky targets")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--frozen-features", action="store_true", help="the pyramid does not require grad")
    parser.add_argument("--check-only", action="store_true", help="compare outputs and gradients, time nothing")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke shape (64², 64-d, 2+3 layers)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 for stable figures)")
    parser.add_argument("--stage", default="after", help="name this run's entry in the JSON (before/after)")
    parser.add_argument("--json", default="benchmarks/results/mask2former_speed_cpu.json")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.channels, args.hidden, args.heads, args.queries = 64, 64, 64, 4, 10
        args.enc_layers, args.enc_ffn, args.dec_layers, args.dec_ffn, args.points = 2, 96, 3, 128, 256
        args.repeats, args.warmup, args.cell = 3, 1, 16
    return args


def main() -> None:
    args = parse()
    hf_modules()  # the one-line error before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vltk = Mask2Former(
        [args.channels] * 4,
        args.classes,
        hidden_dim=args.hidden,
        num_queries=args.queries,
        num_heads=args.heads,
        enc_layers=args.enc_layers,
        enc_ffn=args.enc_ffn,
        dec_layers=args.dec_layers,
        dec_ffn=args.dec_ffn,
        num_points=args.points,
    ).train()
    with torch.no_grad():  # away from the init's whole-pixel offsets (see perturb_offsets)
        perturb_offsets(vltk)
    hf = HFHead(args).train()
    copied = copy_weights(vltk, hf)
    generator = torch.Generator().manual_seed(1)
    features = [
        torch.randn(args.batch, args.channels, args.size // s, args.size // s, generator=generator)
        for s in (4, 8, 16, 32)
    ]
    for f in features:
        f.requires_grad_(not args.frozen_features)
    labels = blocky_labels(args.batch, args.size, args.classes, args.cell, generator)

    def vltk_outputs() -> list[Tensor]:
        out = vltk(features)
        return [*out["all_mask_cls"], *out["all_mask_pred"]]

    def hf_outputs() -> list[Tensor]:
        classes, masks = hf(features)
        return [*classes, *masks]

    # ---- equality: outputs in float32 (what is timed); outputs and gradients of the fixed objective in float64
    output_error, _, _ = compare(vltk, hf, features, with_gradients=False)
    output_error64, grad_error, worst = compare(
        copy.deepcopy(vltk).double(), copy.deepcopy(hf).double(), [f.double() for f in features], with_gradients=True
    )
    print(
        f"copied {copied} tensors; float32 outputs differ by {output_error:.2e}; float64 outputs by "
        f"{output_error64:.2e}, gradients by {grad_error:.2e} (worst: {worst}; relative to each tensor's largest entry)"
    )
    if max(output_error, output_error64, grad_error) > TOLERANCE:
        raise SystemExit(f"vltk and Hugging Face disagree beyond {TOLERANCE}: the comparison is void")
    if args.check_only:
        return

    # ---- timed steps
    with torch.no_grad():
        weights = fixed_backward_weights([o.shape for o in vltk_outputs()], seed=2)
    losses: dict[str, list[float]] = {"vltk": [], "hf": []}

    def zero() -> None:
        vltk.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
        for f in features:
            f.grad = None

    def vltk_loss() -> None:
        zero()
        out = vltk(features)
        loss = vltk.loss(out, labels)["loss"]
        loss.backward()
        losses["vltk"].append(loss.item())

    def hf_loss() -> None:
        zero()
        classes, masks = hf(features)
        loss = hf.loss(classes, masks, labels)
        loss.backward()
        losses["hf"].append(loss.item())

    def vltk_fixed() -> None:
        zero()
        fixed_objective(vltk_outputs(), weights).backward()

    def hf_fixed() -> None:
        zero()
        fixed_objective(hf_outputs(), weights).backward()

    steps = {"loss": (vltk_loss, hf_loss), "fixed": (vltk_fixed, hf_fixed)}
    results: dict[str, Any] = {}
    for kind, (ours_step, theirs_step) in steps.items():
        wall: dict[str, list[float]] = {"vltk": [], "hf": []}
        cpu: dict[str, list[float]] = {"vltk": [], "hf": []}
        for _ in range(args.warmup):
            ours_step()
            theirs_step()
        for repeat in range(args.repeats):
            order = [("vltk", ours_step), ("hf", theirs_step)]
            for name, step in order if repeat % 2 == 0 else order[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                step()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        results[kind] = {
            # process CPU time: with one thread it leaves out the time other jobs held the core (the headline on a
            # loaded machine); wall-clock medians and the pairs' ratios are kept beside it
            "vltk_cpu_median_ms": median_ms(cpu["vltk"]),
            "hf_cpu_median_ms": median_ms(cpu["hf"]),
            "ratio": median_ms(cpu["vltk"]) / median_ms(cpu["hf"]),
            "vltk_wall_median_ms": median_ms(wall["vltk"]),
            "hf_wall_median_ms": median_ms(wall["hf"]),
            "wall_ratio": median_ms(wall["vltk"]) / median_ms(wall["hf"]),
            "paired_wall_ratio": statistics.median(a / b for a, b in zip(wall["vltk"], wall["hf"], strict=True)),
            "vltk_cpu_ms": [1000 * t for t in cpu["vltk"]],
            "hf_cpu_ms": [1000 * t for t in cpu["hf"]],
            "vltk_wall_ms": [1000 * t for t in wall["vltk"]],
            "hf_wall_ms": [1000 * t for t in wall["hf"]],
        }
        r = results[kind]
        print(
            f"{kind:5s}: CPU time vltk {r['vltk_cpu_median_ms']:8.1f} ms  HF {r['hf_cpu_median_ms']:8.1f} ms  ratio "
            f"{r['ratio']:.3f}x; wall {r['wall_ratio']:.3f}x (pairs {r['paired_wall_ratio']:.3f}x)"
        )
    results["loss"]["vltk_loss"] = statistics.median(losses["vltk"])
    results["loss"]["hf_loss"] = statistics.median(losses["hf"])
    print(
        f"losses (median; random points differ): vltk {results['loss']['vltk_loss']:.4f}, HF "
        f"{results['loss']['hf_loss']:.4f}"
    )

    entry = {
        "commit": git_commit(Path(__file__).parent),
        "results": results,
        "output_relative_error_fp32": output_error,
        "output_relative_error_fp64": output_error64,
        "gradient_relative_error_fp64": grad_error,
        "vltk_profile_top": profile_top(vltk_loss, args.profile_rows),
        "hf_profile_top": profile_top(hf_loss, args.profile_rows),
    }
    for row in entry["vltk_profile_top"]:
        print(f"  vltk {row['self_cpu_ms']:9.1f} ms {100 * row['share']:5.1f}%  {row['calls']:6d}x  {row['name']}")
    path = Path(args.json)
    payload: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    payload.update(
        {
            "benchmark": "mask2former_speed",
            "device": describe_device(torch.device("cpu")),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "kernel_backend": os.environ.get("VLTK_KERNEL_BACKEND", "auto"),
            "settings": {
                key: getattr(args, key)
                for key in (
                    "size",
                    "batch",
                    "channels",
                    "classes",
                    "hidden",
                    "heads",
                    "queries",
                    "enc_layers",
                    "enc_ffn",
                    "dec_layers",
                    "dec_ffn",
                    "points",
                    "cell",
                    "repeats",
                    "warmup",
                    "frozen_features",
                )
            },
        }
    )
    payload.setdefault("stages", {})[args.stage] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path} (stage {args.stage})")


if __name__ == "__main__":
    main()
