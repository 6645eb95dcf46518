"""Benchmark cases and the runner behind ``vltk bench``.

A :class:`BenchCase` says how to build inputs for a named shape and which implementations to compare; the
runner times each (``triton.testing.do_bench`` on CUDA, a wall-clock timer on CPU), measures the peak extra
memory, checks each implementation against the baseline (the PyTorch reference) in fp32, and derives GB/s,
TFLOP/s and speed-ups. Plugins add cases through the ``vltk_register_bench_cases`` hook::

    @hookimpl
    def vltk_register_bench_cases(register):
        from vltk_kernels.bench import BenchCase, Shape, backend_implementations
        from my_plugin.ops import my_op

        register(BenchCase(
            name="my_op",
            shapes=(Shape("small", {"n": 4096}),),
            make_inputs=lambda dims, device, dtype: (torch.randn(dims["n"], device=device, dtype=dtype),),
            implementations=backend_implementations(my_op),  # or {"torch": f, "mine": g}
        ))

On a CPU without CUDA the Triton rows run in the interpreter: their times say nothing about GPU speed; only the
reference's times and memory, and the interpreter's correctness, are meaningful (the report says so).
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vltk_kernels._dispatch import interpret_mode, triton_unavailable_reason, use_backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BASELINE = "torch"
CPU_NOTE = (
    "CPU without CUDA: Triton runs in the interpreter (numpy, one program at a time), so its times and memory say "
    "nothing about GPU speed; only the torch reference's times and memory, and the interpreter's correctness "
    "(max_abs_err), are meaningful here."
)

Dims = Mapping[str, int]


@dataclass(frozen=True)
class Shape:
    """A named problem size. ``devices`` lists where it runs by default (``vltk bench`` without ``--shapes``)."""

    name: str
    dims: Dims
    devices: tuple[str, ...] = ("cpu", "cuda")
    note: str = ""


@dataclass(frozen=True)
class BenchCase:
    """One benchmarkable op.

    ``make_inputs(dims, device, dtype)`` returns the positional arguments; floating tensors among them get
    gradients in the forward+backward pass. ``implementations`` maps a name to a callable taking those arguments;
    the entry named ``baseline`` is the reference every other one is checked and compared against.
    ``flops(dims)`` and ``bytes_moved(dims, itemsize)`` (the forward's minimum memory traffic) give TFLOP/s and
    GB/s on CUDA; ``min_extra_bytes(dims, itemsize, backward)`` is the theoretical minimum of the memory the call
    adds (outputs, and input gradients for the backward), printed next to the measured peak.
    """

    name: str
    shapes: tuple[Shape, ...]
    make_inputs: Callable[[Dims, torch.device, torch.dtype], tuple[Any, ...]]
    implementations: Mapping[str, Callable[..., Tensor]]
    baseline: str = BASELINE
    backward: bool = True
    flops: Callable[[Dims], float] | None = None
    bytes_moved: Callable[[Dims, int], float] | None = None
    min_extra_bytes: Callable[[Dims, int, bool], float] | None = None
    summary: str = ""
    plugin: str = field(default="vltk_kernels", compare=False)

    def shape(self, name: str) -> Shape:
        for shape in self.shapes:
            if shape.name == name:
                return shape
        raise KeyError(name)


def backend_implementations(op: Callable[..., Tensor], backends: Sequence[str] = ("triton", "torch")) -> dict:
    """``{backend: op run under use_backend(backend)}`` for an op that dispatches through vltk_kernels."""

    def bind(backend: str) -> Callable[..., Tensor]:
        def run(*args: Any) -> Tensor:
            with use_backend(backend):  # type: ignore[arg-type]
                return op(*args)

        run.__name__ = f"{getattr(op, '__name__', 'op')}[{backend}]"
        return run

    return {backend: bind(backend) for backend in backends}


# -- built-in cases ---------------------------------------------------------------------------------------------


def _rein_inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    b, n, c, m = dims["B"], dims["N"], dims["C"], dims["M"]
    feats = torch.randn(b, n, c, generator=generator)
    tokens = torch.randn(m, c, generator=generator) * 0.5
    values = torch.randn(m - 1, c, generator=generator) * 0.5
    return feats.to(device, dtype), tokens.to(device, dtype), values.to(device, dtype), c**-0.5


def _pts_inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(dims["B"], dims["C"], dims["H"], dims["W"], generator=generator)
    texts = torch.randn(dims["K"], dims["C"], generator=generator)
    return pixels.to(device, dtype), texts.to(device, dtype), 0.07


def _msda_levels(dims: Dims) -> list[tuple[int, int]]:
    height, width = dims["H"], dims["W"]  # the finest level; each next level halves both sides
    return [(max(1, height >> level), max(1, width >> level)) for level in range(dims["L"])]


def _msda_inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    levels = _msda_levels(dims)
    total = sum(h * w for h, w in levels)
    b, heads, d, p = dims["B"], dims["nH"], dims["D"], dims["P"]
    value = torch.randn(b, total, heads, d, generator=generator)
    locations = torch.rand(b, total, heads, len(levels), p, 2, generator=generator)
    weights = torch.rand(b, total, heads, len(levels), p, generator=generator).softmax(-1)
    shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return value.to(device, dtype), shapes, starts, locations.to(device, dtype), weights.to(device, dtype)


def _msda_queries(dims: Dims) -> int:
    return sum(h * w for h, w in _msda_levels(dims))


def builtin_cases() -> list[BenchCase]:
    """The three vltk_kernels ops at test, small-CPU and paper-sized GPU shapes."""
    from vltk_kernels import ms_deform_attn, pixel_text_similarity, rein_attention

    rein = BenchCase(
        name="rein_attention",
        summary="Rein token attention softmax(f Tᵀ/√c)[..., 1:] V",
        shapes=(
            Shape("tiny", {"B": 1, "N": 37, "C": 48, "M": 11}, devices=()),
            Shape("small", {"B": 2, "N": 256, "C": 256, "M": 100}),
            Shape("vit-b-512", {"B": 2, "N": 1024, "C": 768, "M": 100}, note="ViT-B/16, 512² crop, one layer"),
            Shape("vit-l-512", {"B": 4, "N": 1024, "C": 1024, "M": 100}, devices=("cuda",), note="Rein's ViT-L"),
        ),
        make_inputs=_rein_inputs,
        implementations=backend_implementations(rein_attention),
        flops=lambda d: 4.0 * d["B"] * d["N"] * d["C"] * d["M"],
        bytes_moved=lambda d, s: s * (2 * d["B"] * d["N"] * d["C"] + 2 * d["M"] * d["C"]) + 4 * d["B"] * d["N"],
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * d["N"] * d["C"] * (2 if bwd else 1) + (s * 2 * d["M"] * d["C"] if bwd else 0)
        ),
    )
    pts = BenchCase(
        name="pixel_text_similarity",
        summary="cosine similarity of pixel and text embeddings (DenseCLIP, LSeg)",
        shapes=(
            Shape("tiny", {"B": 1, "C": 40, "H": 17, "W": 19, "K": 19}, devices=()),
            Shape("small", {"B": 2, "C": 512, "H": 64, "W": 64, "K": 19}),
            Shape("cityscapes-512", {"B": 2, "C": 512, "H": 128, "W": 128, "K": 19}, note="512² crop at stride 4"),
            Shape("ade-512", {"B": 4, "C": 512, "H": 128, "W": 128, "K": 150}, devices=("cuda",)),
        ),
        make_inputs=_pts_inputs,
        implementations=backend_implementations(pixel_text_similarity),
        flops=lambda d: 2.0 * d["B"] * d["K"] * d["C"] * d["H"] * d["W"],
        bytes_moved=lambda d, s: (
            s * (d["B"] * d["C"] * d["H"] * d["W"] + d["K"] * d["C"] + d["B"] * d["K"] * d["H"] * d["W"])
        ),
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * d["K"] * d["H"] * d["W"]
            + (s * (d["B"] * d["C"] * d["H"] * d["W"] + d["K"] * d["C"]) if bwd else 0)
        ),
    )
    msda = BenchCase(
        name="ms_deform_attn",
        summary="multi-scale deformable attention sampling (Mask2Former pixel decoder)",
        shapes=(
            Shape("tiny", {"B": 1, "H": 8, "W": 10, "L": 3, "nH": 2, "D": 8, "P": 4}, devices=()),
            Shape(
                "small", {"B": 1, "H": 32, "W": 32, "L": 3, "nH": 8, "D": 32, "P": 4}, note="256² image, strides 8-32"
            ),
            Shape("m2f-512", {"B": 2, "H": 64, "W": 64, "L": 3, "nH": 8, "D": 32, "P": 4}, devices=("cuda",)),
            Shape("m2f-1024x2048", {"B": 1, "H": 128, "W": 256, "L": 3, "nH": 8, "D": 32, "P": 4}, devices=("cuda",)),
        ),
        make_inputs=_msda_inputs,
        implementations=backend_implementations(ms_deform_attn),
        flops=lambda d: 2.0 * 4 * d["B"] * _msda_queries(d) * d["nH"] * d["L"] * d["P"] * d["D"],
        bytes_moved=lambda d, s: (
            s * d["B"] * _msda_queries(d) * d["nH"] * (2 * d["D"] + 3 * d["L"] * d["P"])
        ),  # value read once (cache reuse), locations+weights, output
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * _msda_queries(d) * d["nH"] * d["D"] * (2 if bwd else 1)
            + (s * 3 * d["B"] * _msda_queries(d) * d["nH"] * d["L"] * d["P"] if bwd else 0)
        ),
    )
    return [rein, pts, msda]


# -- measurement ------------------------------------------------------------------------------------------------


class PeakTracker(TorchDispatchMode):
    """Peak bytes of tensor storages created while active (inputs and their views/in-place results excluded).

    Works on any device: every op's outputs are seen at the dispatch level and a storage's bytes are released
    when its Python object dies (storages are preserved objects, so that happens with the C++ storage). Memory
    inside an opaque op (a Triton kernel's scratch) is not seen: on CUDA use the allocator's statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._tracked:
            self._tracked.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs, _ = tree_flatten((args, kwargs))
        input_ptrs = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, Tensor)}
        outputs, _ = tree_flatten(out)
        for tensor in outputs:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            key = id(storage)
            if nbytes == 0 or key in self._tracked or storage.data_ptr() in input_ptrs:
                continue
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def time_cpu(fn: Callable[[], Any], repeats: int, min_time_s: float, max_time_s: float) -> tuple[float, float, float]:
    """(median, p20, p80) in ms: one warm-up, then at least ``repeats`` runs and ``min_time_s`` seconds."""
    fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_time_s:
        begin = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - begin))
        if time.perf_counter() - started > max_time_s:
            break
    samples.sort()
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8)


def time_cuda(fn: Callable[[], Any], grad_to_none: list[Tensor] | None) -> tuple[float, float, float]:
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    return median, p20, p80


@dataclass
class BenchSettings:
    device: torch.device
    dtypes: Sequence[str]
    backends: Sequence[str] | None = None  # None: every implementation of a case
    shapes: Sequence[str] | None = None  # None: the shapes whose ``devices`` include this device
    backward: bool = True
    repeats: int = 5
    min_time_s: float = 0.2
    max_time_s: float = 20.0


def _differentiable(args: Sequence[Any]) -> list[Tensor]:
    return [x for x in args if isinstance(x, Tensor) and x.is_floating_point()]


def _prepare(args: tuple[Any, ...], requires_grad: bool) -> tuple[Any, ...]:
    return tuple(
        x.detach().clone().requires_grad_(requires_grad and x.is_floating_point()) if isinstance(x, Tensor) else x
        for x in args
    )


def _max_abs_error(fn: Callable[..., Tensor], reference: Callable[..., Tensor], args: tuple, backward: bool) -> float:
    """Largest |difference| of the output (and input gradients) against the reference run in fp32."""
    upcast = tuple(x.float() if isinstance(x, Tensor) and x.is_floating_point() else x for x in args)
    mine, ref = _prepare(args, backward), _prepare(upcast, backward)
    out, expected = fn(*mine), reference(*ref)
    errors = [(out.float() - expected).abs().max().item()]
    if backward:
        generator = torch.Generator().manual_seed(1)
        grad = torch.randn(expected.shape, generator=generator).to(expected.device)
        got = torch.autograd.grad(out, _differentiable(mine), grad.to(out.dtype))
        want = torch.autograd.grad(expected, _differentiable(ref), grad)
        errors += [(g.float() - w).abs().max().item() for g, w in zip(got, want, strict=True)]
    return max(errors)


def _measure_memory(fn: Callable[..., Tensor], args: tuple, backward: bool, device: torch.device) -> tuple[float, str]:
    """Peak bytes the call adds beyond its inputs: CUDA allocator statistics, else the dispatch-level tracker."""
    inputs = _prepare(args, backward)
    grad = None
    if backward:
        with torch.no_grad():
            grad = torch.ones_like(fn(*_prepare(args, False)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(*inputs)
        if backward:
            out.backward(grad)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "cuda allocator peak"
    tracker = PeakTracker()
    with tracker:
        if backward:
            out = fn(*inputs)
            out.backward(grad)
        else:
            with torch.no_grad():
                out = fn(*inputs)
    del out
    return float(tracker.peak), "tensor storages created during the call (dispatch tracker)"


def run_case(case: BenchCase, settings: BenchSettings, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Every (shape, dtype, pass, implementation) row of one case."""
    device = settings.device
    names = (
        list(case.implementations)
        if settings.backends is None
        else [b for b in settings.backends if b in case.implementations]
    )
    if case.baseline not in names and case.baseline in case.implementations:
        names.append(case.baseline)  # speed-ups and errors need it
    shapes = (
        [s for s in case.shapes if device.type in s.devices]
        if settings.shapes is None
        else [case.shape(n) for n in settings.shapes if n in {s.name for s in case.shapes}]
    )
    passes = ["fwd", "fwd+bwd"] if settings.backward and case.backward else ["fwd"]
    rows: list[dict] = []
    for shape in shapes:
        for dtype_name in settings.dtypes:
            dtype = DTYPES[dtype_name]
            args = case.make_inputs(shape.dims, device, dtype)
            itemsize = torch.empty((), dtype=dtype).element_size()
            for pass_name in passes:
                group: list[dict] = []
                for name in names:
                    log(f"{case.name} {shape.name} {dtype_name} {pass_name} {name}")
                    group.append(_run_one(case, shape, dtype_name, pass_name, name, args, itemsize, settings))
                baseline = next((r for r in group if r["impl"] == case.baseline and r["status"] == "ok"), None)
                for row in group:
                    # an interpreted kernel's time is no GPU estimate, so no ratio is derived from it
                    if baseline is not None and row["status"] == "ok" and "note" not in row:
                        row["speedup_vs_baseline"] = baseline["median_ms"] / row["median_ms"]
                rows.extend(group)
    return rows


def _run_one(
    case: BenchCase,
    shape: Shape,
    dtype_name: str,
    pass_name: str,
    name: str,
    args: tuple,
    itemsize: int,
    settings: BenchSettings,
) -> dict:
    device = settings.device
    backward = pass_name == "fwd+bwd"
    fn = case.implementations[name]
    row: dict[str, Any] = {
        "op": case.name,
        "shape": shape.name,
        "dims": dict(shape.dims),
        "dtype": dtype_name,
        "pass": pass_name,
        "impl": name,
        "status": "ok",
    }
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            return {**row, "status": "skipped", "reason": reason}
    interpreted = name == "triton" and device.type == "cpu"
    try:
        if name != case.baseline:
            row["max_abs_err"] = _max_abs_error(fn, case.implementations[case.baseline], args, backward)
        inputs = _prepare(args, backward)
        leaves = _differentiable(inputs) if backward else []
        grad = None
        if backward:
            with torch.no_grad():
                grad = torch.ones_like(fn(*_prepare(args, False)))

        def call() -> None:
            if backward:
                for leaf in leaves:
                    leaf.grad = None
                fn(*inputs).backward(grad)
            else:
                with torch.no_grad():
                    fn(*inputs)

        if device.type == "cuda":
            median, p20, p80 = time_cuda(call, leaves or None)
        else:  # the interpreter is slow and its time is not a GPU estimate: one timed run is enough
            repeats = 1 if interpreted else settings.repeats
            median, p20, p80 = time_cpu(call, repeats, 0.0 if interpreted else settings.min_time_s, settings.max_time_s)
        row.update(median_ms=median, p20_ms=p20, p80_ms=p80)
        if not interpreted:
            peak, method = _measure_memory(fn, args, backward, device)
            row.update(peak_extra_mb=peak / 2**20, memory_method=method)
        if case.min_extra_bytes is not None:
            row["min_extra_mb"] = case.min_extra_bytes(shape.dims, itemsize, backward) / 2**20
        if device.type == "cuda" and not backward:
            if case.flops is not None:
                row["tflops"] = case.flops(shape.dims) / (median * 1e-3) / 1e12
            if case.bytes_moved is not None:
                row["gbps"] = case.bytes_moved(shape.dims, itemsize) / (median * 1e-3) / 1e9
        if interpreted:
            row["note"] = "Triton interpreter on CPU: time not a GPU estimate"
    except Exception as error:  # one failing implementation must not hide the others' results
        row.update(status="error", reason=f"{type(error).__name__}: {error}")
    return row


# -- environment ------------------------------------------------------------------------------------------------


def git_commit(start: Path | None = None) -> str | None:
    """The checked-out commit, read from ``.git`` directly (no git executable needed), or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        for base in (git, Path(str(git).split("/worktrees/")[0]) if "/worktrees/" in str(git) else git):
            ref_file = base / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        return None
    return None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "device": describe_device(device),
        "cuda": device.type == "cuda",
        "triton_interpreter": interpret_mode(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": version("triton"),
            "vltk": version("vltk-dg"),
            "cuda": torch.version.cuda,
        },
        "platform": sys.platform,
        "commit": git_commit(Path(__file__).parent),
    }


__all__ = [
    "BASELINE",
    "CPU_NOTE",
    "DTYPES",
    "BenchCase",
    "BenchSettings",
    "PeakTracker",
    "Shape",
    "backend_implementations",
    "builtin_cases",
    "environment",
    "git_commit",
    "run_case",
]
