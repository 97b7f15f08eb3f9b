#!/usr/bin/env bash
# The one prepared GPU call for issue 7: device facts, the kernel's GPU tests, then
# kernels/bench.py within its budget; numbers go into kernels/BENCHMARKS.md afterwards.
# Runs from a bare checkout under the device image's python3 (torch, triton, pyarrow,
# pandas, pytest there; no vLLM, so its GPU test skips). Without a GPU it runs the
# same steps on the smoke shapes through Triton's interpreter (a rehearsal).
# Usage: bash kernels/device_check.sh OUT_DIR [BUDGET_S]
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [BUDGET_S]}
budget=${2:-420}
mkdir -p "$out"
py=${PYTHON:-python3}
pkgs=$(mktemp -d)  # kernels/ is the package skipbench_kernels once installed; map it without installing
ln -s "$PWD/kernels" "$pkgs/skipbench_kernels"
export PYTHONPATH="$pkgs:$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"

smoke=()
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.csv"
else
    echo "no GPU: rehearsal on smoke shapes (Triton interpreter)" | tee "$out/gpu.csv"
    smoke=(--smoke)
fi
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$out/versions.txt"

echo "== GPU tests"
timeout 200 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_triton.py tests/test_vllm_kernel.py \
    >"$out/gpu_tests.txt" 2>&1
echo "pytest exit $?" >>"$out/gpu_tests.txt"
tail -8 "$out/gpu_tests.txt"

echo "== bench (budget ${budget} s)"
timeout $((${budget%.*} + 90)) "$py" kernels/bench.py --out "$out/bench" --budget-s "$budget" "${smoke[@]}" \
    >"$out/bench.log" 2>&1
echo "bench exit $?" | tee -a "$out/bench.log"
tail -5 "$out/bench.log"
cat "$out/bench/summary.md" 2>/dev/null
