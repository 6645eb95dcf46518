"""Time the synthetic renderer per domain and image size: layout and painting of one scene, one core.

The synthetic dataset renders every item on the fly, so its speed bounds how fast a CPU run can feed a model;
this measures it (the test suite only checks what is rendered, never how fast: timings flake on a loaded
machine). numpy only. Writes JSON (machine, versions, settings, per-(size, domain) timings).

    OMP_NUM_THREADS=1 python benchmarks/render_time.py                  # 128 and 256, every domain
    python benchmarks/render_time.py --sizes 256 --scenes 20 --json /tmp/render_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS
from vltk_plugins.datasets.synthetic.render import render_scene


def time_domain(domain: str, size: int, scenes: int, warmup: int) -> dict[str, Any]:
    """Median and spread of ``render_scene`` over ``scenes`` different layouts (caches warmed first)."""
    for index in range(warmup):
        render_scene(0, index, size, domain)
    times = []
    for index in range(scenes):
        start = time.perf_counter()
        render_scene(0, warmup + index, size, domain)
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "size": size,
        "domain": domain,
        "median_ms": 1000 * statistics.median(times),
        "p20_ms": 1000 * times[int(0.2 * (len(times) - 1))],
        "p80_ms": 1000 * times[int(0.8 * (len(times) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square image sizes")
    parser.add_argument("--domains", nargs="+", default=list(SYNTHETIC_DOMAINS), choices=SYNTHETIC_DOMAINS)
    parser.add_argument("--scenes", type=int, default=10, help="timed scenes per (size, domain)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/render_time.json", help="output file")
    args = parser.parse_args()
    results = [time_domain(domain, size, args.scenes, args.warmup) for size in args.sizes for domain in args.domains]
    payload = {
        "benchmark": "render_time",
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "settings": {"scenes": args.scenes, "warmup": args.warmup, "seed": 0},
        "results": results,
    }
    print(f"{'size':>5s} {'domain':10s} {'median ms':>10s} {'p20':>8s} {'p80':>8s}")
    for r in results:
        print(f"{r['size']:>5d} {r['domain']:10s} {r['median_ms']:>10.1f} {r['p20_ms']:>8.1f} {r['p80_ms']:>8.1f}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
