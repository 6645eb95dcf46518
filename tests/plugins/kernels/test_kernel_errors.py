"""A kernel backend error reaches the user as one ``Error:`` line: vltk_kernels owns the type, the kernels plugin
declares it through ``vltk_user_error_types``, and the CLI maps it like a UserError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vltk.plugins import VltkPluginManager
from vltk_kernels import KernelBackendError
from vltk_plugins.kernels import hooks as kernels_hooks


def test_kernels_plugin_declares_the_backend_error() -> None:
    manager = VltkPluginManager(autoload=False)
    assert manager.user_error_types() == ()
    manager.add_plugin(kernels_hooks, "kernels")
    assert manager.user_error_types() == (KernelBackendError,)


def test_hooks_module_stays_light() -> None:
    """``vltk --help`` imports every hooks module: this one must not pull in torch or vltk_kernels."""
    code = "import sys, vltk_plugins.kernels.hooks; assert not {'torch', 'vltk_kernels'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_unknown_backend_during_train_is_one_error_line(tmp_path: Path) -> None:
    """End to end: the Rein adapter calls the rein_attention op in its first forward; an unknown backend name in
    the environment stops ``vltk train`` with exit code 2 and one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(VLTK_KERNEL_BACKEND="tritonn", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "vltk", "train", "--adapter", "rein", "--output", str(tmp_path / "run"),
               "dataset.size=64", "dataset.num_train=2", "dataset.num_val=2", "train.iters=1",
               "train.batch_size=1", "train.eval_interval=0", "eval.batch_size=1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: unknown kernel backend 'tritonn' from VLTK_KERNEL_BACKEND=tritonn; choose one of auto, triton, torch"
    ]
    assert "Traceback" not in done.stderr
