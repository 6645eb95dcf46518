"""vltk_kernels works installed alone: with ``vltk`` unimportable it imports, dispatches and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys


    class BlockVltk:
        '''Any import of vltk or vltk.* fails, as on a machine where only vltk_kernels is installed.'''

        def find_spec(self, name, path=None, target=None):
            if name == "vltk" or name.startswith("vltk."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None


    sys.meta_path.insert(0, BlockVltk())
    try:
        import vltk  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("the blocker did not block vltk")

    import torch

    import vltk_kernels
    from vltk_kernels import KernelBackendError, rein_attention, use_backend
    from vltk_kernels.benchmarking import BenchSettings, environment, run_case
    from vltk_kernels.ms_deform_attn.bench import bench_case as ms_deform_attn_case
    from vltk_kernels.pixel_text_similarity.bench import bench_case as pixel_text_similarity_case
    from vltk_kernels.rein_attention import rein_attention_reference
    from vltk_kernels.rein_attention.bench import bench_case as rein_attention_case

    generator = torch.Generator().manual_seed(0)
    feats, tokens, values = (torch.randn(*shape, generator=generator) for shape in ((2, 5, 8), (4, 8), (3, 8)))
    # auto on CPU without the interpreter: the reference, bit for bit, without loading the Triton module
    assert torch.equal(rein_attention(feats, tokens, values, 0.5), rein_attention_reference(feats, tokens, values, 0.5))
    assert "vltk_kernels.rein_attention.triton" not in sys.modules
    try:
        with use_backend("bogus"):
            pass
    except KernelBackendError as error:
        assert "choose one of auto, triton, torch" in str(error)
    else:
        raise AssertionError("an unknown backend was accepted")

    cases = [rein_attention_case(), pixel_text_similarity_case(), ms_deform_attn_case()]
    settings = BenchSettings(torch.device("cpu"), ["fp32"], backends=["torch"], shapes=["tiny"], repeats=1,
                             min_time_s=0.0)
    rows = [row for case in cases for row in run_case(case, settings)]
    assert {row["op"] for row in rows} == {"rein_attention", "pixel_text_similarity", "ms_deform_attn"}
    assert all(row["status"] == "ok" for row in rows), rows
    assert environment(torch.device("cpu"))["versions"]["torch"] == torch.__version__
    loaded = sorted(name for name in sys.modules if name == "vltk" or name.startswith("vltk."))
    assert not loaded, loaded
    print("standalone ok")
    """
)


def test_vltk_kernels_works_without_vltk() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLTK_KERNEL_BACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "standalone ok" in result.stdout
