"""transformers DeepseekV3ForCausalLM with a SkipRule: correctness oracle and fallback engine.

Each MoE layer's router (`DeepseekV3MoE.gate`, a DeepseekV3TopkRouter) is wrapped in a
SkipGate on the loaded model object; the transformers classes themselves stay
untouched. The gate returns the logits it routed from, so every strategy (including
the re-routing ones, see routing.py) runs at this one level. Skip path `sentinel`: a
dropped slot gets weight 0 and id E (one past the last expert). The `eager` experts
implementation skips id E without computing it, so here skipping really saves the
expert's FLOPs; `grouped_mm` would leave such rows uninitialised (DESIGN.md section 3),
hence eager is forced.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skipbench.model.adapters import gate_spec, moe_blocks
from skipbench.skip.routing import LayerRule, RouterSpec
from skipbench.skip.strategies import SkipRule
from skipbench.infer.traces import slot_weights

SKIP_PATH = "sentinel"


def layer_index(name: str) -> int:
    """Model layer index in a module name like 'model.layers.12.mlp' (vLLM's too)."""
    found = re.search(r"layers\.(\d+)\.", name + ".")
    if found is None:
        raise ValueError(f"no layer index in module name {name!r}")
    return int(found.group(1))


def router_spec(gate: nn.Module, layer: int) -> RouterSpec:
    """RouterSpec of a transformers router (DeepseekV3TopkRouter, or another family's: adapters.py)."""
    return gate_spec(gate, layer)


class SkipGate(nn.Module):
    """Routes like the wrapped DeepseekV3TopkRouter, then applies the rule; counts kept slots.

    With `tracing` on, every call's (ids, weights, keep) is kept on the host for traces.py.
    """

    def __init__(self, gate: nn.Module, rule: SkipRule, layer: int):
        super().__init__()
        self.gate = gate
        self.layer = layer
        self.num_experts = gate.num_experts
        self.rule = rule
        self.tokens = 0  # host ints: the oracle is eager, a sync per layer costs nothing here
        self.kept = 0
        self.decode_tokens = 0  # the same over decode rows (generated tokens fed back), prompt rows apart
        self.decode_kept = 0
        self.capped = 0  # top_p: token-layers whose rule over all E wanted more than K experts
        self.uncapped = 0  # top_p: experts that rule wanted, summed over token-layers
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (ids, weights, keep)
        self.tracing = False
        self.prefill = False  # set per forward by patch_model's pre-hook: this call is a prompt pass
        self.decode_rows: torch.Tensor | None = None  # [T] set by a teacher-forced caller: overrides `prefill`
        self.calls: list[tuple[np.ndarray, ...]] = []  # per call (ids, weights, keep) [T,K] each

    @property
    def rule(self) -> SkipRule:
        return self.layer_rule.rule

    @rule.setter
    def rule(self, rule: SkipRule) -> None:
        self.layer_rule = LayerRule(rule, router_spec(self.gate, self.layer), self.gate.weight.device)

    def forward(self, hidden_states: torch.Tensor):
        if self.layer_rule.spec.bias is not getattr(self.gate, "e_score_correction_bias", None):  # model.to() replaced buffers
            self.rule = self.rule
        logits, topk_weights, topk_ids = self.gate(hidden_states)  # [T,E], [T,K], [T,K]
        if self.decode_rows is not None:  # [T] decode rows
            decode = self.decode_rows.to(topk_ids.device)
        else:  # a prompt pass (more than one token per sequence) has no decode row
            decode = torch.full((topk_ids.shape[0],), not self.prefill, dtype=torch.bool, device=topk_ids.device)
        weights, ids, keep = self.layer_rule.apply(topk_weights, topk_ids, logits,
                                                   decode if self.rule.decode_only else None)
        self.tokens += keep.shape[0]
        self.kept += int(keep.sum())
        self.decode_tokens += int(decode.sum())
        self.decode_kept += int(keep[decode].sum())
        if (wanted := self.layer_rule.uncapped(logits)) is not None:  # [T]
            self.capped += int((wanted > keep.shape[1]).sum())
            self.uncapped += int(wanted.sum())
        self.last = (ids, weights, keep)
        if self.tracing:
            traced = slot_weights(self.rule.strategy, topk_weights, weights)  # [T,K]
            self.calls.append((ids.cpu().numpy(), traced.float().cpu().numpy(), keep.cpu().numpy()))
        if not self.rule.is_dense:
            ids = ids.masked_fill(~keep, self.num_experts)
        return logits, weights, ids

    def reset(self) -> None:
        """Zero the counters (the trace is taken separately, by the engine's take_trace)."""
        self.tokens = self.kept = self.decode_tokens = self.decode_kept = self.capped = self.uncapped = 0
        self.last = None


def patch_model(model: nn.Module, rule: SkipRule) -> list[tuple[str, SkipGate]]:
    """Wrap the router of every MoE block in `model` (DeepseekV3MoE, or another family's:
    adapters.py); returns (layer name, SkipGate)."""
    gates = []
    for name, module in moe_blocks(model):
        if isinstance(module.gate, SkipGate):
            raise RuntimeError(f"{name} is already patched")
        module.gate = SkipGate(module.gate, rule, layer_index(name))
        gates.append((name, module.gate))
    if not gates:
        raise ValueError("model has no MoE layer to patch")

    def phase(module, args, kwargs):
        # generate(): the prompt pass feeds every prompt token, each decode step one per sequence
        x = kwargs.get("input_ids", args[0] if args else None)
        x = kwargs.get("inputs_embeds") if x is None else x
        for _, gate in gates:
            gate.prefill = x is not None and x.shape[1] > 1

    model.register_forward_pre_hook(phase, with_kwargs=True)
    return gates


def load_oracle(model_dir: Path, rule: SkipRule, dtype: torch.dtype = torch.float32):
    """(model in eval mode, [(layer name, SkipGate)]) for a DeepSeek-V3 checkpoint directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, experts_implementation="eager", attn_implementation="eager"
    )
    model.eval()
    return model, patch_model(model, rule)
