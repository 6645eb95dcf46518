"""The harness behind ``vltk bench``: cases, measuring, running, provenance — one module per job.

A :class:`BenchCase` (:mod:`.cases`) says how to build inputs for a named shape and which implementations to
compare; :func:`run_case` (:mod:`.run`) times each (``triton.testing.do_bench`` on CUDA, a wall-clock timer on
CPU), measures the peak extra memory, checks each implementation against the baseline (the PyTorch reference) in
fp32, and derives GB/s, TFLOP/s and speed-ups (the measuring pieces are in :mod:`.measure`);
:func:`environment` (:mod:`.provenance`) records where it ran. The built-in ops' cases live beside each op
(``vltk_kernels/<op>/bench.py``); the vltk kernels plugin registers them through the
``vltk_register_bench_cases`` hook, and other plugins add theirs the same way::

    @hookimpl
    def vltk_register_bench_cases(register):
        from vltk_kernels.benchmarking import BenchCase, Shape, backend_implementations
        from my_plugin.ops import my_op

        register(BenchCase(
            name="my_op",
            shapes=(Shape("small", {"n": 4096}),),
            make_inputs=lambda dims, device, dtype: (torch.randn(dims["n"], device=device, dtype=dtype),),
            implementations=backend_implementations(my_op),  # or {"torch": f, "mine": g}
        ))

The built-in ops compare three implementations: ``triton`` (the kernel), ``torch`` (the reference, the baseline)
and ``lean`` (the memory-lean PyTorch path the ``torch`` backend dispatches to). On a CPU without CUDA the Triton
rows run in the interpreter: their times say nothing about GPU speed; only the reference's and the lean path's
times and memory, and the interpreter's correctness, are meaningful (the report says so).
"""

from vltk_kernels.benchmarking.cases import (
    BASELINE,
    BenchCase,
    Dims,
    Shape,
    backend_implementations,
    op_implementations,
)
from vltk_kernels.benchmarking.measure import PeakTracker
from vltk_kernels.benchmarking.provenance import describe_device, environment, git_commit
from vltk_kernels.benchmarking.run import CPU_NOTE, DTYPES, BenchSettings, run_case

__all__ = [
    "BASELINE",
    "CPU_NOTE",
    "DTYPES",
    "BenchCase",
    "BenchSettings",
    "Dims",
    "PeakTracker",
    "Shape",
    "backend_implementations",
    "describe_device",
    "environment",
    "git_commit",
    "op_implementations",
    "run_case",
]
