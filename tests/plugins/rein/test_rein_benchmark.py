"""``benchmarks/rein_adapter_speed.py`` at a tiny shape: it runs, its equality check passes, it writes its JSON.

Only the script's working is checked; its timings are not asserted (they flake on a loaded machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "rein_adapter_speed.py"
TINY = ["--batch", "2", "--patches", "15", "--channels", "24", "--token-length", "6", "--lora-dim", "4"]


def test_rein_adapter_speed_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rein.json"
    out.write_text(json.dumps({"benchmark": "rein_adapter_speed", "runs": {"before": {"kept": True}}}))
    command = [sys.executable, str(SCRIPT), *TINY, "--layers", "3", "--repeats", "2", "--warmup", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--profile-top", "3", "--label", "smoke", "--json", str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert payload["runs"]["before"] == {"kept": True}  # other labels survive
    run = payload["runs"]["smoke"]
    assert run["shape"] == {
        "batch": 2, "patches": 15, "channels": 24, "layers": 3, "token_length": 6, "lora_dim": 4, "gate": 0.1,
    }  # fmt: skip
    assert run["check"]["outputs_equal"] and run["check"]["grads_equal"], run["check"]
    assert run["check"]["output_max_abs"] < 1e-5 and run["check"]["output_max_ref"] > 0
    assert set(run["check"]["grad_max_rel"]) >= {"input", "learnable_tokens_a", "mlp_delta_f.weight", "scale"}
    assert all(len(times) == 2 for times in run["times_ms"].values())
    assert run["ratio_of_medians"] == run["median_ms"]["vltk"] / run["median_ms"]["upstream"]
    assert min(run["pair_ratios"]) <= run["ratio_vltk_to_upstream"] <= max(run["pair_ratios"])
    assert {len(rows) for rows in run["profile_top_self_cpu"].values()} == {3}
    assert "vltk / upstream" in result.stdout
