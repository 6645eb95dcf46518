"""``vltk bench``: CliRunner runs on the tiny shapes (JSON content, errors, plugin cases) and the memory tracker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vltk import hookimpl
from vltk.testing import invoke, isolated_plugin_manager


def run_json(args: list[str]) -> dict:
    result = invoke(["bench", *args, "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_help_and_list() -> None:
    result = invoke(["bench", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "interpreter" in result.output
    listing = invoke(["bench", "--list"])
    for op in ("rein_attention", "pixel_text_similarity", "ms_deform_attn"):
        assert op in listing.output
    assert "tiny" in listing.output


def test_bench_module_does_not_import_torch() -> None:
    """``vltk --help`` imports every command module: this one must stay light."""
    code = (
        "import sys, vltk_plugins.kernels.bench_command; "
        "assert 'torch' not in sys.modules and 'triton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_json_rows_for_one_op_on_cpu() -> None:
    payload = run_json(["rein_attention", "--shapes", "tiny", "--repeats", "1", "--device", "cpu"])
    assert payload["benchmark"] == "kernels" and payload["cuda"] is False
    assert "interpreter" in payload["note"] and payload["versions"]["torch"]
    assert "commit" in payload and payload["settings"]["dtypes"] == ["fp32"]
    rows = {(row["impl"], row["pass"]): row for row in payload["results"]}
    assert set(rows) == {(impl, p) for impl in ("triton", "torch") for p in ("fwd", "fwd+bwd")}
    assert all(row["status"] == "ok" and row["op"] == "rein_attention" for row in rows.values())
    assert rows[("triton", "fwd+bwd")]["max_abs_err"] < 1e-4
    reference = rows[("torch", "fwd")]
    assert reference["speedup_vs_baseline"] == 1.0
    # the reference materialises the [B, N, M] scores, so it needs more than the output alone
    assert reference["peak_extra_mb"] > reference["min_extra_mb"] > 0
    assert rows[("torch", "fwd+bwd")]["peak_extra_mb"] > reference["peak_extra_mb"]
    assert "note" in rows[("triton", "fwd")]  # interpreter times are flagged, and no speed-up is derived
    assert "speedup_vs_baseline" not in rows[("triton", "fwd")]


def test_table_and_json_file(tmp_path: Path) -> None:
    out = tmp_path / "results" / "bench.json"
    result = invoke(["bench", "pixel_text_similarity", "--shapes", "tiny", "--backend", "torch", "--no-backward",
                     "--repeats", "1", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pixel_text_similarity" in result.output and "wrote" in result.output
    rows = json.loads(out.read_text())["results"]
    assert [(row["impl"], row["pass"]) for row in rows] == [("torch", "fwd")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rein_atention"], "did you mean 'rein_attention'?"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--shapes", "tinny"], "did you mean 'tiny'?"),
        (["--backend", "cuda"], "unknown backend 'cuda'"),
    ],
)
def test_user_errors(args: list[str], message: str) -> None:
    result = invoke(["bench", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


class DoublingPlugin:
    """A plugin adding a case with its own implementations (no vltk_kernels op involved)."""

    def __init__(self, name: str = "double") -> None:
        self.name = name

    @hookimpl
    def vltk_register_bench_cases(self, register) -> None:  # noqa: ANN001 - the hook's callback
        import torch

        from vltk_kernels.bench import BenchCase, Shape

        register(
            BenchCase(
                name=self.name,
                shapes=(Shape("tiny", {"N": 64}),),
                make_inputs=lambda dims, device, dtype: (torch.randn(dims["N"], device=device, dtype=dtype),),
                implementations={"torch": lambda x: x * 2, "added": lambda x: x + x},
            )
        )


def test_plugin_case_runs_and_duplicates_fail() -> None:
    import vltk_plugins.kernels.hooks

    # the kernels plugin provides the `vltk bench` command itself: the isolated manager must load it too
    kernels = vltk_plugins.kernels.hooks
    with isolated_plugin_manager(autoload=False, extra={"kernels": kernels, "myplugin": DoublingPlugin()}):
        payload = run_json(["double", "--shapes", "tiny", "--repeats", "1"])
        listing = invoke(["bench", "--list"]).output
    assert "double [myplugin]" in listing
    rows = {(row["impl"], row["pass"]): row for row in payload["results"]}
    assert rows[("added", "fwd+bwd")]["max_abs_err"] == 0 and rows[("added", "fwd")]["speedup_vs_baseline"] > 0
    with isolated_plugin_manager(autoload=False, extra={"kernels": kernels, "clash": DoublingPlugin("rein_attention")}):
        result = invoke(["bench", "--list"])
    assert result.exit_code == 2 and "registered twice" in result.output and "'clash'" in result.output


def test_peak_tracker_counts_temporaries_not_inputs() -> None:
    import torch

    from vltk_kernels.bench import PeakTracker

    x = torch.randn(256, 256)  # 256 KiB, an input: not counted
    tracker = PeakTracker()
    with tracker:
        doubled = x * 2  # +256 KiB
        shifted = doubled + 1  # +256 KiB: the peak
        del doubled  # -256 KiB
        view = shifted[1:]  # a view: no new storage
        shifted.add_(1)  # in place: no new storage
        total = view.sum()  # +4 bytes
    assert tracker.peak == 2 * 256 * 256 * 4
    assert tracker.live == 256 * 256 * 4 + 4
    del shifted, view, total
