"""The measured replay's GPU paths: torch._grouped_mm over the kept rows and the project's
Triton skip kernel (kernels/), on the same replayed steps as the CPU path (skipbench.speed.replay).

Both get bf16 weights of the replay's expert width (one layer's E experts, reused by every
MoE layer of a step, as on CPU) and never read an expert no kept slot selects. Each timed
step ends with a device sync. Off CUDA these run only under Triton's interpreter (tests).
Shapes: B tokens a step, K slots, H hidden, I intermediate, E experts.
"""

from __future__ import annotations

import numpy as np

from skipbench.speed.replay import ExpertShape, Routing


class KernelPath:
    """One routed-experts function (x, w13, w2, ids, weights, keep) on a device."""

    def __init__(self, name: str, fn, shape: ExpertShape, experts: int, max_batch: int, device: str = "cuda",
                 seed: int = 0):  # fmt: skip
        import torch

        from skipbench_kernels.tune import random_layer

        self.name, self.fn, self.device = name, fn, device
        self.w13, self.w2, _ = random_layer(experts, shape.hidden, shape.intermediate, "bf16", device, seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        self.x = torch.randn(max_batch, shape.hidden, generator=gen, device=device).bfloat16()  # B_max, H

    def prepare(self, routing: Routing):
        """Routing on the device before timing: the copy is not part of a step."""
        import torch

        ids, w, kept = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in routing)
        return ids, w.float(), kept.bool()

    def run(self, routing) -> None:
        ids, w, kept = routing
        self.fn(self.x[: len(ids)], self.w13, self.w2, ids, w, kept)

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def gpu_paths(shape: ExpertShape, experts: int, max_batch: int, device: str = "cuda") -> list[KernelPath]:
    """grouped_mm and triton_v2 over one bf16 layer each."""
    from skipbench_kernels.baselines import grouped_mm_moe
    from skipbench_kernels.moe_triton import moe_triton

    def triton(x, w13, w2, ids, w, keep):
        return moe_triton(x, w13, w2, ids, w, keep)

    return [KernelPath("grouped_mm", grouped_mm_moe, shape, experts, max_batch, device),
            KernelPath("triton_v2", triton, shape, experts, max_batch, device)]  # fmt: skip
