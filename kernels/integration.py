"""How the engines run the skip-aware kernel: manifest choice, transformers experts module.

transformers (implemented here): each DeepseekV3MoE's `experts` (DeepseekV3Experts, or
transformers' FP8Experts for a block-FP8 checkpoint) is replaced on the loaded model object
by SkipAwareExperts, which calls moe_triton with the same weight tensors (no copy). The
MoE layer keeps calling it as experts(hidden, top_k_index, top_k_weights); a slot whose id
is out of range (the oracle's sentinel E, or -1) is skipped: its expert is never loaded.
`use_skip_kernel` does this only when the build_kernels manifest chose the Triton backend
and the model sits on a GPU, and returns the skip path that will run, for the results.

vLLM: skipbench.infer.vllm_kernel (the plugin's kernel path) runs RoutedExperts.forward_modular
on moe_triton with the rule's keep mask, reading vLLM's w13_weight [E, 2I, H], w2_weight
[E, H, I] and block-FP8 w13/w2_weight_scale_inv, which are this kernel's layout.

Triton runs on a CUDA device, or on CPU tensors under its interpreter (TRITON_INTERPRET=1:
slow, tests only); `triton_runs_on` is the one place that says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .moe_triton import MoeConfig, moe_triton
from .tune import Tuned, config_for, configs_from_json, configs_to_json

log = logging.getLogger(__name__)

SKIP_PATH = "skip_kernel"  # results' skip_path when this kernel runs (roofline.SKIP_PATHS)


@dataclass(frozen=True)
class KernelChoice:
    backend: str  # triton | reference
    reason: str
    tuned: list[Tuned] = field(default_factory=list)

    def config_for(self, tokens: int) -> MoeConfig | None:
        return config_for(self.tuned, tokens)

    def to_json(self) -> str:
        """For processes the engine starts (vLLM workers read it from the environment)."""
        return json.dumps({"backend": self.backend, "reason": self.reason, "tuned": configs_to_json(self.tuned)})

    @classmethod
    def from_json(cls, text: str) -> "KernelChoice":
        d = json.loads(text)
        return cls(d["backend"], d["reason"], configs_from_json(d["tuned"]))


def triton_runs_on(device: torch.device) -> bool:
    """CUDA, or CPU under Triton's interpreter (which tests use at tiny shapes)."""
    import triton

    return device.type == "cuda" or (device.type == "cpu" and bool(triton.knobs.runtime.interpret))


def load_kernel_choice(manifest_path: str | Path) -> KernelChoice:
    """The backend and tuned configs written by the build_kernels stage."""
    import pyarrow.parquet as pq

    rows = pq.read_table(manifest_path).to_pylist()
    if not rows:
        raise ValueError(f"empty kernel manifest {manifest_path}")
    if not all(r["passed"] for r in rows):
        raise RuntimeError(f"kernel manifest {manifest_path} records failed self-tests")
    first = rows[0]
    return KernelChoice(first["backend"], first["reason"], configs_from_json(first["configs"]) if first["configs"] else [])


class SkipAwareExperts(nn.Module):
    """Drop-in for transformers' DeepseekV3Experts / FP8Experts, backed by moe_triton."""

    def __init__(self, experts: nn.Module, tuned: list[Tuned]):
        super().__init__()
        self.inner = experts  # owns the parameters; state_dict keys move under .inner
        self.tuned = tuned
        self.num_experts = experts.gate_up_proj.shape[0]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        e = self.inner
        keep = (top_k_index >= 0) & (top_k_index < self.num_experts)  # T, K: sentinels are skips
        return moe_triton(
            hidden_states, e.gate_up_proj, e.down_proj, top_k_index, top_k_weights, keep,
            w13_scale=getattr(e, "gate_up_proj_scale_inv", None), w2_scale=getattr(e, "down_proj_scale_inv", None),
            config=config_for(self.tuned, hidden_states.shape[0]),
        )  # fmt: skip


def patch_experts(model: nn.Module, tuned: list[Tuned]) -> list[str]:
    """Replace the experts of every DeepseekV3MoE in `model`; returns the patched module names."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    names = []
    for name, module in model.named_modules():
        if isinstance(module, DeepseekV3MoE) and not isinstance(module.experts, SkipAwareExperts):
            module.experts = SkipAwareExperts(module.experts, tuned)
            names.append(name)
    if not names:
        raise ValueError("model has no DeepseekV3MoE layer to patch")
    return names


def use_skip_kernel(model: nn.Module, choice: KernelChoice) -> str | None:
    """Patch the model when the manifest chose Triton and Triton runs on the model's device.

    Returns SKIP_PATH when the kernel will run, None when the engine keeps its own path
    (the caller records that path, e.g. the oracle's `sentinel`, in its results).
    """
    device = next(model.parameters()).device
    if choice.backend != "triton" or not triton_runs_on(device):
        log.info("skip kernel not used: backend %s on %s (%s)", choice.backend, device, choice.reason)
        return None
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    if not any(isinstance(m, DeepseekV3MoE) for m in model.modules()):  # other families: their own experts
        log.info("skip kernel not used: %s has no DeepseekV3MoE layer", type(model).__name__)
        return None
    names = patch_experts(model, choice.tuned)
    log.info("skip kernel in %d MoE layers", len(names))
    return SKIP_PATH
