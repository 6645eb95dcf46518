"""``vltk bench``: CliRunner runs on the tiny shapes (JSON content, errors, plugin cases), the registration of
cases through the plugin manager, and the memory tracker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vltk import hookimpl
from vltk.errors import UserError
from vltk.plugins import VltkPluginManager
from vltk.testing import invoke, isolated_plugin_manager
from vltk_plugins.kernels import hooks as kernels_hooks


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
    assert set(rows) == {(impl, p) for impl in ("triton", "torch", "lean") for p in ("fwd", "fwd+bwd")}
    assert all(row["status"] == "ok" and row["op"] == "rein_attention" for row in rows.values())
    assert rows[("triton", "fwd+bwd")]["max_abs_err"] < 1e-4
    assert rows[("lean", "fwd+bwd")]["max_abs_err"] < 1e-5 and "speedup_vs_baseline" in rows[("lean", "fwd")]
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

        from vltk_kernels.benchmarking import BenchCase, Shape

        register(
            BenchCase(
                name=self.name,
                shapes=(Shape("tiny", {"N": 64}),),
                make_inputs=lambda dims, device, dtype: (torch.randn(dims["N"], device=device, dtype=dtype),),
                implementations={"torch": lambda x: x * 2, "added": lambda x: x + x},
            )
        )


def test_plugin_case_runs_and_duplicates_fail() -> None:
    with isolated_plugin_manager(autoload=False, extra={"kernels": kernels_hooks, "myplugin": DoublingPlugin()}):
        payload = run_json(["double", "--shapes", "tiny", "--repeats", "1"])
        listing = invoke(["bench", "--list"]).output
    assert "double [myplugin]" in listing and "rein_attention [kernels]" in listing
    rows = {(row["impl"], row["pass"]): row for row in payload["results"]}
    assert rows[("added", "fwd+bwd")]["max_abs_err"] == 0 and rows[("added", "fwd")]["speedup_vs_baseline"] > 0
    with isolated_plugin_manager(
        autoload=False, extra={"kernels": kernels_hooks, "clash": DoublingPlugin("rein_attention")}
    ):
        result = invoke(["bench", "--list"])
    assert result.exit_code == 2 and "registered twice" in result.output
    assert "'kernels'" in result.output and "'clash'" in result.output and "Traceback" not in result.output


def test_built_in_cases_come_from_the_kernels_plugin_hook() -> None:
    """The built-in ops are registered through ``vltk_register_bench_cases`` like any plugin's: blocking the
    kernels plugin leaves no built-in case behind."""
    built_in = ["rein_attention", "pixel_text_similarity", "ms_deform_attn"]
    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(kernels_hooks, "kernels")
    cases = manager.bench_cases()
    assert list(cases) == built_in
    assert {plugin for plugin, _ in cases.values()} == {"kernels"}
    assert not set(VltkPluginManager(blocked={"kernels"}).bench_cases()) & set(built_in)


class NamedCasePlugin:
    """Registers any object as a case: the manager reads only its name (the core does not import vltk_kernels)."""

    def __init__(self, *cases: object) -> None:
        self.cases = cases

    @hookimpl
    def vltk_register_bench_cases(self, register) -> None:  # noqa: ANN001 - the hook's callback
        for case in self.cases:
            register(case)


def test_duplicate_case_names_both_plugins() -> None:
    manager = VltkPluginManager(autoload=False)
    manager.add_plugin(NamedCasePlugin(SimpleNamespace(name="op")), "first")
    manager.add_plugin(NamedCasePlugin(SimpleNamespace(name="other"), SimpleNamespace(name="op")), "second")
    with pytest.raises(UserError, match="bench case 'op' is registered twice") as info:
        manager.bench_cases()
    message = str(info.value)
    assert "'first'" in message and "'second'" in message and "\n" not in message


def test_a_case_without_a_name_or_of_the_wrong_type_is_a_user_error() -> None:
    nameless = VltkPluginManager(autoload=False)
    nameless.add_plugin(NamedCasePlugin(object()), "nameless")
    with pytest.raises(UserError, match="plugin 'nameless' registered a bench case without a name"):
        nameless.bench_cases()
    with isolated_plugin_manager(autoload=False, extra={"kernels": kernels_hooks, "odd": NamedCasePlugin(
            SimpleNamespace(name="odd_case"))}):  # fmt: skip
        result = invoke(["bench", "--list"])
    assert result.exit_code == 2 and "plugin 'odd' registered a bench case that is not a BenchCase" in result.output


def test_peak_tracker_counts_temporaries_not_inputs() -> None:
    import torch

    from vltk_kernels.benchmarking import PeakTracker

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
