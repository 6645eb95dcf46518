#!/usr/bin/env bash
# One-command GPU suite: the GPU-marked tests, `vltk bench` for every op in fp32/fp16/bf16, the train-step
# benchmark (eager, fp32 and bf16 autocast), the activation-checkpointing and Rein memory benchmarks (peak training
# memory at 512^2, batch 4), the input-size scaling table (128^2 to 1024^2, bf16), everything written under
# benchmarks/results/<gpu name slug>/ with a manifest.json (each step's command, exit code, duration and log, plus
# the device and versions).
#
#   bash benchmarks/gpu_suite.sh             # on a CUDA machine; at most VLTK_SUITE_BUDGET_S seconds (default 470)
#   bash benchmarks/gpu_suite.sh --dry-run   # anywhere: print every command and check each tool and script
#
# Every step runs under `timeout` and never past the suite's deadline; a step that fails or times out is recorded
# and the suite goes on. Exit status: 0 all steps passed, 1 some step failed or timed out, 2 no CUDA device (or a
# bad argument). PYTHON selects the interpreter (default: python); the checkout's packages come first on
# PYTHONPATH, so the suite measures this working tree.
set -uo pipefail

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$arg'; use --dry-run or --help" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python}"
BUDGET_S="${VLTK_SUITE_BUDGET_S:-470}"
DTYPES=(fp32 fp16 bf16)
export PYTHONPATH="$ROOT:$ROOT/kernels:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# tests/conftest.py turns the Triton interpreter on unless told otherwise: on a GPU the kernels must compile
export TRITON_INTERPRET=0

# --- the plan: one "name|timeout seconds|command" line per step --------------------------------------------------

plan() {
    local out="$1" ops="$2" op dtype
    echo "gpu_tests|120|$PYTHON -m pytest -m gpu -q -p no:cacheprovider tests --junitxml=$out/gpu_tests.xml"
    for dtype in "${DTYPES[@]}"; do
        for op in $ops; do
            echo "bench_${op}_${dtype}|30|$PYTHON -m vltk bench $op --device cuda --dtype $dtype --json $out/kernels_${op}_${dtype}.json"
        done
    done
    echo "train_step_fp32|40|$PYTHON benchmarks/train_step.py --device cuda --precision fp32 --json $out/train_step_fp32.json"
    echo "train_step_bf16|40|$PYTHON benchmarks/train_step.py --device cuda --precision bf16 --json $out/train_step_bf16.json"
    echo "compile_step_bf16|150|$PYTHON benchmarks/compile_step.py --device cuda --precision bf16 --size 256 --steps 20 --json $out/compile_step_bf16.json"
    # (four EVA02-L builds at random init take ~40 s of CPU time before the first step)
    echo "activation_checkpointing|100|$PYTHON benchmarks/activation_checkpointing.py --device cuda --variant large --size 512 --batch 4 --timed-steps 3 --json $out/activation_checkpointing.json"
    echo "rein_memory|150|$PYTHON benchmarks/rein_memory.py --device cuda --size 512 --batch 4 --json $out/rein_memory.json"
    echo "scaling_bf16|90|$PYTHON benchmarks/scaling.py --device cuda --precision bf16 --sizes 128 256 512 768 1024 --json $out/scaling_bf16.json"
}

bench_ops() {  # the registered ops, from `vltk bench --list` (first word of each unindented line)
    "$PYTHON" -m vltk bench --list | awk '/^[^ ]/ {print $1}'
}

# --- dry run: print the plan, check that every tool and script is there and parses -------------------------------

if [[ "$DRY_RUN" == 1 ]]; then
    failures=0
    check() {  # check "<what>" command...
        local what="$1"
        shift
        if "$@" >/dev/null 2>&1; then
            echo "check ok: $what"
        else
            echo "check FAILED: $what ($*)"
            failures=$((failures + 1))
        fi
    }
    check "timeout (coreutils) is installed" command -v timeout
    check "this script parses" bash -n "${BASH_SOURCE[0]}"
    check "$PYTHON imports torch, vltk, vltk_kernels and vltk_plugins" \
        "$PYTHON" -c "import torch, vltk, vltk_kernels, vltk_plugins"
    ops="$(bench_ops 2>/dev/null | tr '\n' ' ')"
    check "vltk bench --list names the ops ($ops)" test -n "$ops"
    check "benchmarks/train_step.py --help takes --precision" \
        bash -c "'$PYTHON' benchmarks/train_step.py --help | grep -q -- --precision"
    check "benchmarks/compile_step.py --help takes --backend" \
        bash -c "'$PYTHON' benchmarks/compile_step.py --help | grep -q -- --backend"
    for script in activation_checkpointing rein_memory scaling; do
        check "benchmarks/$script.py --help runs" "$PYTHON" "benchmarks/$script.py" --help
    done
    check "pytest is installed" "$PYTHON" -m pytest --version
    gpu_test_files="$(grep -rl --include='test_*.py' 'mark.gpu' tests | sort | tr '\n' ' ')"
    check "GPU-marked test files exist ($gpu_test_files)" test -n "$gpu_test_files"
    # shellcheck disable=SC2086  # one argument per file
    check "the GPU-marked test files compile" "$PYTHON" -m py_compile $gpu_test_files
    echo "dry run: the suite would write benchmarks/results/<gpu name slug>/ and run, within ${BUDGET_S}s:"
    while IFS='|' read -r name limit command; do
        echo "  [$name] timeout ${limit}s: $command"
    done < <(plan "benchmarks/results/<gpu>" "${ops:-<op>}")
    echo "  [manifest] benchmarks/results/<gpu>/manifest.json"
    if ((failures > 0)); then
        echo "dry run: $failures check(s) failed"
        exit 1
    fi
    echo "dry run: all checks passed"
    exit 0
fi

# --- the real run --------------------------------------------------------------------------------------------------

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_suite.sh: no CUDA device is available here; run it on a GPU machine (or use --dry-run to check it)" >&2
    exit 2
fi

GPU_NAME="$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))")"
SLUG="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')"
OUT="benchmarks/results/$SLUG"
mkdir -p "$OUT"
STEPS="$OUT/.steps.tsv"
: >"$STEPS"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
echo "gpu suite on $GPU_NAME -> $OUT (budget ${BUDGET_S}s)"

failed=0
ops="$(bench_ops | tr '\n' ' ')"
while IFS='|' read -r name limit command; do
    now=$(date +%s)
    left=$((DEADLINE - now))
    if ((left < 10)); then
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "skipped" "0" "$command" >>"$STEPS"
        echo "[$name] skipped: the suite's budget is spent"
        failed=1
        continue
    fi
    ((limit > left)) && limit=$left
    echo "[$name] $command"
    began=$(date +%s%N)
    # shellcheck disable=SC2086  # the plan's commands are plain words
    timeout -k 5 "$limit" $command >"$OUT/$name.log" 2>&1
    rc=$?
    took_ms=$((($(date +%s%N) - began) / 1000000))
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$rc" "$took_ms" "$command" >>"$STEPS"
    echo "[$name] exit $rc after $((took_ms / 1000))s (log: $OUT/$name.log)"
    ((rc != 0)) && failed=1
done < <(plan "$OUT" "$ops")

"$PYTHON" - "$OUT" "$BUDGET_S" "$START" <<'PY'
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

out, budget, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
steps = []
for line in (out / ".steps.tsv").read_text().splitlines():
    name, limit, rc, took_ms, command = line.split("\t", 4)
    status = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped"}.get(rc, "failed")
    steps.append({
        "name": name, "command": command, "timeout_s": int(limit), "exit_code": None if rc == "skipped" else int(rc),
        "status": status, "duration_s": int(took_ms) / 1000, "log": None if rc == "skipped" else f"{name}.log",
    })
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    smi = None
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    commit = None
manifest = {
    "suite": "benchmarks/gpu_suite.sh",
    "device": {"name": torch.cuda.get_device_name(0), "nvidia_smi": smi, "torch": torch.__version__,
               "cuda": torch.version.cuda, "capability": list(torch.cuda.get_device_capability(0))},
    "commit": commit or None,
    "budget_s": budget,
    "total_s": round(time.time() - start, 1),
    "steps": steps,
    "all_ok": all(step["status"] == "ok" for step in steps),
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
(out / ".steps.tsv").unlink()
print(f"wrote {out / 'manifest.json'}: {sum(s['status'] == 'ok' for s in steps)}/{len(steps)} steps ok")
PY
exit "$failed"
