"""``vltk bench``: time the fused kernels against their PyTorch references (and plugin-registered cases).

Everything heavy (torch, vltk_kernels, Triton) is imported inside the command, so ``vltk --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from vltk.api import UserError, bench_cases, did_you_mean

EPILOG = """\b
Examples:
  vltk bench                                    # every op, default shapes for this device
  vltk bench rein_attention --dtype bf16        # one op (on a GPU)
  vltk bench --shapes tiny --backend torch      # quick, reference only
  vltk bench --list                             # ops and their shapes
  vltk bench --json benchmarks/results/kernels_cpu.json
\b
On CUDA Triton is timed with triton.testing.do_bench; on a CPU without CUDA it runs in the Triton interpreter,
so only the reference's times and memory and the interpreter's correctness are meaningful.
"""


def _collect_cases() -> dict[str, Any]:
    """Every registered case (the built-in ops' come from this plugin's own hook), tagged with its plugin."""
    from dataclasses import replace

    from vltk_kernels.benchmarking import BenchCase

    cases: dict[str, Any] = {}
    for name, (plugin, case) in bench_cases().items():
        if not isinstance(case, BenchCase):
            raise UserError(
                f"plugin '{plugin}' registered a bench case that is not a BenchCase: {case!r}; register a "
                "vltk_kernels.benchmarking.BenchCase"
            )
        cases[name] = replace(case, plugin=plugin)
    return cases


def _pick_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(device)


def _split(values: tuple[str, ...]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _format(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _print_table(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    console.print(
        f"[bold]vltk bench[/bold] on {payload['device']}  (torch {payload['versions']['torch']}, "
        f"triton {payload['versions']['triton']}, commit {str(payload['commit'])[:10]})"
    )
    if payload.get("note"):
        console.print(f"[yellow]{payload['note']}[/yellow]")
    table = Table(show_lines=False)
    columns = ["op", "shape", "dtype", "pass", "impl", "median ms", "p20", "p80", "speed-up", "peak MB", "min MB",
               "max |err|", "TFLOP/s", "GB/s"]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column not in ("op", "shape", "dtype", "pass", "impl") else "left")
    for row in payload["results"]:
        if row["status"] != "ok":
            table.add_row(row["op"], row["shape"], row["dtype"], row["pass"], row["impl"],
                          f"[dim]{row['status']}: {row.get('reason', '')}[/dim]")  # fmt: skip
            continue
        speedup = row.get("speedup_vs_baseline")
        table.add_row(
            row["op"], row["shape"], row["dtype"], row["pass"], row["impl"],
            _format(row.get("median_ms")), _format(row.get("p20_ms")), _format(row.get("p80_ms")),
            f"{speedup:.2f}x" if speedup is not None else "-",
            _format(row.get("peak_extra_mb")), _format(row.get("min_extra_mb")),
            _format(row.get("max_abs_err"), 2), _format(row.get("tflops")), _format(row.get("gbps")),
        )  # fmt: skip
    console.print(table)


@click.command("bench", epilog=EPILOG)
@click.argument("ops", nargs=-1)
@click.option("--backend", "backends", multiple=True, help="implementations to run (repeat or comma-separate; "
              "default all of each op's: triton, torch (the reference) and lean for the built-in ops)")  # fmt: skip
@click.option("--dtype", "dtypes", multiple=True, help="fp32, fp16 or bf16 (repeatable; default fp32 on CPU, "
              "bf16 on CUDA)")  # fmt: skip
@click.option("--shapes", "shapes", multiple=True, help="shape names (repeat or comma-separate; see --list); "
              "default: the shapes meant for this device")  # fmt: skip
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-backward", is_flag=True, help="time the forward pass only")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="CPU timer: minimum runs")
@click.option(
    "--threads", type=click.IntRange(min=1), help="torch CPU threads (1 gives stable times on a busy machine)"
)
@click.option("--list", "list_only", is_flag=True, help="list the ops, their shapes and implementations, then exit")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write results as JSON ('-': stdout)")
def bench_command(
    ops: tuple[str, ...],
    backends: tuple[str, ...],
    dtypes: tuple[str, ...],
    shapes: tuple[str, ...],
    device: str,
    no_backward: bool,
    repeats: int,
    threads: int | None,
    list_only: bool,
    json_path: str | None,
) -> None:
    """Time each op's Triton kernel against its PyTorch reference: median/p20/p80, speed-up, peak memory next to
    the theoretical minimum, max error vs the reference, and TFLOP/s and GB/s on CUDA."""
    if json_path and json_path != "-":
        check_json_path(Path(json_path))  # before the work: the results must have somewhere to go
    torch_device = _pick_device(device)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if torch_device.type == "cpu" and "TRITON_INTERPRET" not in os.environ:
        # Triton cannot compile for a CPU; the interpreter still checks the kernels. Must precede their import.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from vltk_kernels.benchmarking import CPU_NOTE, DTYPES, BenchSettings, environment, run_case

    cases = _collect_cases()
    if list_only:
        for case in cases.values():
            names = ", ".join(f"{s.name} {dict(s.dims)}" for s in case.shapes)
            click.echo(f"{case.name} [{case.plugin}] {case.summary}\n  implementations: "
                       f"{', '.join(case.implementations)}\n  shapes: {names}")  # fmt: skip
        return
    for op in ops:
        if op not in cases:
            raise UserError(f"unknown op '{op}'.{did_you_mean(op, cases)} Known: {', '.join(cases)}")
    selected = [cases[op] for op in ops] if ops else list(cases.values())
    dtype_names = _split(dtypes) or (["bf16"] if torch_device.type == "cuda" else ["fp32"])
    for name in dtype_names:
        if name not in DTYPES:
            raise UserError(f"unknown dtype '{name}'.{did_you_mean(name, DTYPES)} Choose from {', '.join(DTYPES)}")
    backend_names = _split(backends) or None
    known_impls = {impl for case in selected for impl in case.implementations}
    for name in backend_names or []:
        if name not in known_impls:
            raise UserError(f"unknown backend '{name}'.{did_you_mean(name, known_impls)} "
                            f"Choose from {', '.join(sorted(known_impls))}")  # fmt: skip
    shape_names = _split(shapes) or None
    known_shapes = {shape.name for case in selected for shape in case.shapes}
    for name in shape_names or []:
        if name not in known_shapes:
            raise UserError(f"unknown shape '{name}'.{did_you_mean(name, known_shapes)} "
                            f"Choose from {', '.join(sorted(known_shapes))}")  # fmt: skip

    settings = BenchSettings(
        device=torch_device,
        dtypes=dtype_names,
        backends=backend_names,
        shapes=shape_names,
        backward=not no_backward,
        repeats=repeats,
    )
    quiet = json_path == "-"
    results: list[dict[str, Any]] = []
    for case in selected:
        results.extend(run_case(case, settings, log=(lambda _: None) if quiet else _progress))
    payload = {
        "benchmark": "kernels",
        **environment(torch_device),
        "note": CPU_NOTE if torch_device.type == "cpu" else None,
        "settings": {
            "ops": [case.name for case in selected],
            "dtypes": dtype_names,
            "backends": backend_names,
            "shapes": shape_names,
            "backward": not no_backward,
            "repeats": repeats,
            "cpu_threads": torch.get_num_threads(),
        },
        "results": results,
    }
    if json_path == "-":
        click.echo(json.dumps(payload, indent=2))
        return
    _print_table(payload)
    if json_path:
        path = Path(json_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as error:
            raise UserError(f"cannot write --json '{path}': {error.strerror or error}; choose another path") from None
        click.echo(f"wrote {path}")


def check_json_path(path: Path) -> None:
    """Refuse a ``--json`` file that cannot be written (a folder by that name, a file in the way of its folder,
    no permission) without creating anything, so a benchmark never runs for minutes to fail at its last line."""
    if path.is_dir():
        raise UserError(f"--json '{path}' is a folder; give a file name, e.g. {path / 'bench.json'}")
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--json '{path}' cannot be created: '{folder}' is a file, not a folder; choose another path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".vltk-bench-check.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(
            f"--json '{path}' cannot be written (in '{folder}'): {error.strerror or error}; choose another path"
        ) from None


def _progress(message: str) -> None:
    click.echo(f"  running {message}", err=True)
