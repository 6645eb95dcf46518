"""Run ``vltk bench`` on every kernel op with the settings of the committed results and write the JSON.

    python benchmarks/kernels.py                     # -> benchmarks/results/kernels_cpu.json (or _cuda.json)
    python benchmarks/kernels.py --threads 2 --json /tmp/k.json

On a CPU the Triton rows run in the interpreter (correctness only); the reference rows give the PyTorch
baseline's time and its peak extra memory next to the theoretical minimum (outputs, plus input gradients for the
backward). On CUDA the same command reports do_bench times, speed-ups, TFLOP/s and GB/s.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="output file (default benchmarks/results/kernels_<device>.json)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on a shared machine)")
    parser.add_argument("--dtype", action="append", help="fp32/fp16/bf16 (default: fp32 on CPU, bf16 on CUDA)")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = args.json or str(Path(__file__).parent / "results" / f"kernels_{device}.json")
    command = ["--device", device, "--json", path]
    if device == "cpu":
        command += ["--threads", str(args.threads)]
    for dtype in args.dtype or []:
        command += ["--dtype", dtype]

    from vltk_plugins.kernels.bench_command import bench_command

    bench_command.main(args=command, prog_name="vltk bench")


if __name__ == "__main__":
    main()
