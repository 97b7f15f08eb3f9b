"""transformers DeepseekV3ForCausalLM with a SkipRule: correctness oracle and fallback engine.

Each MoE layer's router (`DeepseekV3MoE.gate`, a DeepseekV3TopkRouter) is wrapped in a
SkipGate on the loaded model object; the transformers classes themselves stay
untouched. Skip path `sentinel`: a dropped slot gets weight 0 and id E (one past the
last expert). The `eager` experts implementation skips id E without computing it, so
here skipping really saves the expert's FLOPs; `grouped_mm` would leave such rows
uninitialised (DESIGN.md section 3), hence eager is forced.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from skipbench.strategies import SkipRule

SKIP_PATH = "sentinel"


class SkipGate(nn.Module):
    """Routes like the wrapped DeepseekV3TopkRouter, then applies `rule`; counts kept slots."""

    def __init__(self, gate: nn.Module, rule: SkipRule):
        super().__init__()
        self.gate = gate
        self.rule = rule
        self.num_experts = gate.num_experts
        self.tokens = 0  # host ints: the oracle is eager, a sync per layer costs nothing here
        self.kept = 0
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (ids, weights, keep)

    def forward(self, hidden_states: torch.Tensor):
        logits, topk_weights, topk_ids = self.gate(hidden_states)  # [T,E], [T,K], [T,K]
        weights, keep = self.rule.apply(topk_weights, topk_ids)
        self.tokens += keep.shape[0]
        self.kept += int(keep.sum())
        self.last = (topk_ids, weights, keep)
        if not self.rule.is_dense:
            topk_ids = topk_ids.masked_fill(~keep, self.num_experts)
        return logits, weights, topk_ids

    def reset(self) -> None:
        self.tokens = self.kept = 0
        self.last = None


def patch_model(model: nn.Module, rule: SkipRule) -> list[tuple[str, SkipGate]]:
    """Wrap the router of every DeepseekV3MoE in `model`; returns (layer name, SkipGate)."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    gates = []
    for name, module in model.named_modules():
        if isinstance(module, DeepseekV3MoE):
            if isinstance(module.gate, SkipGate):
                raise RuntimeError(f"{name} is already patched")
            module.gate = SkipGate(module.gate, rule)
            gates.append((name, module.gate))
    if not gates:
        raise ValueError("model has no DeepseekV3MoE layer to patch")
    return gates


def load_oracle(model_dir: Path, rule: SkipRule, dtype: torch.dtype = torch.float32):
    """(model in eval mode, [(layer name, SkipGate)]) for a DeepSeek-V3 checkpoint directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, experts_implementation="eager", attn_implementation="eager"
    )
    model.eval()
    return model, patch_model(model, rule)
