"""The roofline's two inputs: what a device does (HardwareProfile) and what a model weighs (ModelShape).

Hardware: bandwidth and dense matmul rates, each with its source.
Profiles live in config/hardware/<name>.yaml (add a file to add a device). A profile with a
`measure:` block instead of numbers is measured at run time on the device the stage runs
on (copy bandwidth, BF16 matmul rate): that is how a CPU run gets a profile that its own
engine measurements can validate. A `calibration:` block names measured kernel times on
the device (a data file next to the profile, with device, date and source) that
skipbench.speed.costmodel fits; a `calibrate:` block asks the roofline stage to measure them here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DTYPE_BYTES = {"fp8": 1, "bf16": 2, "fp32": 4}
BLOCK = 128  # DeepSeek FP8: one fp32 scale per 128x128 weight block
KV_BYTES = 2  # bf16 KV cache (MLA: the latent; GQA: keys and values)

# deepseek-ai/DeepSeek-V3 config.json (routing and shape fields): the shape kernels/bench.py times.
DEEPSEEK_V3_CONFIG = dict(
    model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, first_k_dense_replace=3, n_routed_experts=256, num_experts_per_tok=8, n_shared_experts=1,
    num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
    qk_nope_head_dim=128, v_head_dim=128, vocab_size=129280, n_group=8, topk_group=4, topk_method="noaux_tc",
    scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
    quantization_config=dict(quant_method="fp8", fmt="e4m3", weight_block_size=[128, 128]),
)  # fmt: skip

HARDWARE_DIR = Path(__file__).resolve().parents[3] / "config" / "hardware"


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    device: str  # what the numbers describe: a datasheet name, or engines.device_name() when measured
    bandwidth: float  # bytes/s of device memory, one device
    bf16_flops: float  # dense (no sparsity) BF16 FLOP/s, one device
    fp8_flops: float  # dense FP8 FLOP/s; = bf16_flops where the device has no FP8 matmul
    sources: dict = field(default_factory=dict)  # field -> where the number comes from
    cost: object = None  # the first of `costs`, or None (kept for callers that take one fit)
    costs: tuple = ()  # costmodel.CostModel per calibration entry (kernel, dtype, expert shape each)
    calibrate: dict | None = None  # `calibrate:` block: time this machine's MoE layer at run time (roofline)

    def flops(self, dtype: str) -> float:
        return self.fp8_flops if dtype == "fp8" else self.bf16_flops


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up: first touch of pages, kernel selection
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_profile(
    name: str = "this-machine", copy_mib: int = 256, matmul_n: int = 2048, repeats: int = 5
) -> HardwareProfile:
    """Measure copy bandwidth (read + write bytes / s) and BF16 matmul FLOP/s here.

    FP8 matmul is not measured (no portable FP8 GEMM on CPU); the profile uses the BF16
    rate for it and says so in `sources`.
    """
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src = torch.empty(copy_mib << 20, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), device, repeats)
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    mm_s = _best_seconds(lambda: a @ b, device, repeats)
    from skipbench.infer.engines import device_name  # the name engine runs record: validation joins on it

    desc = device_name()
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    profile = HardwareProfile(
        name=name,
        device=desc,
        bandwidth=2 * src.numel() / copy_s,
        bf16_flops=2 * matmul_n**3 / mm_s,
        fp8_flops=2 * matmul_n**3 / mm_s,
        sources=dict(
            bandwidth=f"measured {when} on {desc}: torch copy of {copy_mib} MiB, best of {repeats}, read+write bytes",
            bf16_flops=f"measured {when} on {desc}: torch bf16 matmul {matmul_n}^3, best of {repeats}",
            fp8_flops="not measured: set to the measured bf16 rate",
        ),
    )
    log.info("measured profile %s: %.1f GB/s, %.2f TFLOP/s bf16", desc, profile.bandwidth / 1e9,
             profile.bf16_flops / 1e12)  # fmt: skip
    return profile


def machine_key() -> str:
    """A file-name-safe key of the machine a `this-machine` fit was timed on: host, CPU model
    and CPU count (read without torch, so a Snakefile can name files with it)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1] for ln in f.read(1 << 20).splitlines() if ln.startswith("model name")), "")
    except OSError:
        pass
    raw = f"{platform.node()}-{platform.machine()}x{os.cpu_count()}-{cpu or platform.processor()}"
    return re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-")[:120] or "unknown"


def profile_path(name_or_path: str, hardware_dir: str | Path = HARDWARE_DIR) -> Path:
    """config/hardware/<name>.yaml, or the yaml file named."""
    path = Path(name_or_path)
    return path if path.suffix in (".yaml", ".yml") else Path(hardware_dir) / f"{name_or_path}.yaml"


def measured_profiles(hardware: list[str], hardware_dir: str | Path = HARDWARE_DIR) -> list[str]:
    """The profiles among `hardware` whose numbers are measured here (a `measure:` block)."""
    out = []
    for name in hardware:
        path = profile_path(name, hardware_dir)
        if path.exists() and "measure" in (yaml.safe_load(path.read_text()) or {}):
            out.append(name)
    return out


def load_profile(name_or_path: str, hardware_dir: str | Path = HARDWARE_DIR) -> HardwareProfile:
    """Profile from config/hardware/<name>.yaml (or a path to a yaml file)."""
    path = profile_path(name_or_path, hardware_dir)
    if not path.exists():
        known = sorted(p.stem for p in Path(hardware_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no hardware profile {name_or_path!r} ({path}); known: {known}")
    cfg = yaml.safe_load(path.read_text())
    name = cfg.get("name", path.stem)
    calibrate = cfg.get("calibrate")
    if calibrate is not None and not isinstance(calibrate, dict):
        raise ValueError(f"{path}: `calibrate` must be a mapping")
    if "measure" in cfg:
        return dataclasses.replace(measure_profile(name, **cfg["measure"]), calibrate=calibrate)
    values, sources = {}, {}
    for key in ("bandwidth", "bf16_flops", "fp8_flops"):
        entry = cfg.get(key)
        if not isinstance(entry, dict) or "value" not in entry or "source" not in entry:
            raise ValueError(f"{path}: `{key}` needs `value` and `source` (every number says where it comes from)")
        values[key], sources[key] = float(entry["value"]), str(entry["source"])
    costs = ()
    if "calibration" in cfg:
        from skipbench.speed.costmodel import load_calibration

        blocks = cfg["calibration"] if isinstance(cfg["calibration"], list) else [cfg["calibration"]]
        costs = tuple(load_calibration(b, path.parent, str(path)) for b in blocks)
    return HardwareProfile(name=name, device=str(cfg["device"]), sources=sources, cost=costs[0] if costs else None,
                           costs=costs, calibrate=calibrate, **values)  # fmt: skip


def matrix_bytes(rows: int, cols: int, dtype: str) -> int:
    """Bytes of a [rows, cols] weight; FP8 adds one fp32 scale per 128x128 block."""
    n = rows * cols * DTYPE_BYTES[dtype]
    if dtype == "fp8":
        n += math.ceil(rows / BLOCK) * math.ceil(cols / BLOCK) * 4
    return n


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs of a MoE config.json, any family in adapters.py.

    Which layers are MoE, the expert count and top-k come from adapters.routing_of (one
    reading of the routing for the whole project); this adds the matrix shapes. Attention
    is MLA (DeepSeek-V2/V3: low-rank query and KV, absorbed decode) or GQA/MHA (Qwen2/3-MoE,
    Mixtral, OLMoE: q/k/v/o projections, kv_heads x head_dim cached per token). Left out as
    small next to these matrices: norms (incl. Qwen3/OLMoE q/k norms), Qwen2-MoE's q/k/v
    biases and its shared-expert sigmoid gate [1, H], rotary tables. DeepSeek-V3 values in
    comments.
    """

    family: str  # config.json model_type ("deepseek_v3")
    hidden: int  # 7168
    inter: int  # dense MLP intermediate of the dense layers (18432); unused when every layer is MoE
    moe_inter: int  # one routed expert's intermediate (2048)
    shared_inter: int  # shared experts' summed intermediate (1 x 2048); 0: none
    n_layers: int  # 61
    n_moe_layers: int  # layers with routed experts (58); the other layers have a dense MLP
    n_experts: int  # routed experts per MoE layer (256)
    top_k: int  # 8
    n_shared: int  # shared experts (1)
    heads: int  # attention (query) heads (128)
    vocab: int  # 129280
    weight_dtype: str  # as shipped: fp8 when the config carries an fp8 quantization_config
    attention: str  # "mla" (DeepSeek) or "gqa" (grouped-query or multi-head)
    kv_heads: int = 0  # gqa: key/value heads
    head_dim: int = 0  # gqa: per-head width (config head_dim, else hidden / heads)
    q_lora: int = 0  # mla: query compression (1536); 0: none (DeepSeek-V2-Lite)
    kv_lora: int = 0  # mla: latent KV width (512)
    rope: int = 0  # mla: rotary part of a query/key head (64)
    nope: int = 0  # mla: non-rotary part of a query/key head (128)
    v_head: int = 0  # mla: value head width (128)

    @classmethod
    def from_config(cls, config: dict | str | Path) -> "ModelShape":
        """From config.json (a dict, its path, or the checkpoint directory); needs model_type."""
        from skipbench.model.adapters import expert_intermediate, routing_of  # imports torch: only when a shape is read

        if not isinstance(config, dict):
            path = Path(config)
            config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        routing = routing_of(config)
        family = routing.family
        quant = config.get("quantization_config") or {}
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        moe_inter, shared_inter = expert_intermediate(config, routing)
        if family.startswith("deepseek"):
            attn = dict(attention="mla", q_lora=config.get("q_lora_rank") or 0, kv_lora=config["kv_lora_rank"],
                        rope=config["qk_rope_head_dim"], nope=config["qk_nope_head_dim"], v_head=config["v_head_dim"])
        else:
            attn = dict(attention="gqa", kv_heads=config.get("num_key_value_heads") or heads,
                        head_dim=config.get("head_dim") or hidden // heads)
            window = config.get("sliding_window")
            if window and (family == "mixtral" or config.get("use_sliding_window")):
                log.warning("%s: sliding window %d ignored: the roofline reads the KV cache of the whole context",
                            family, window)  # fmt: skip
        return cls(
            family=family, hidden=hidden, inter=config["intermediate_size"], moe_inter=moe_inter,
            shared_inter=shared_inter, n_layers=config["num_hidden_layers"], n_moe_layers=len(routing.moe_layers),
            n_experts=routing.experts, top_k=routing.top_k, n_shared=routing.shared_experts, heads=heads,
            vocab=config["vocab_size"], weight_dtype="fp8" if quant.get("quant_method") == "fp8" else "bf16", **attn,
        )  # fmt: skip

    @property
    def n_dense_layers(self) -> int:
        """Layers with a dense MLP instead of routed experts (anywhere: Qwen mlp_only_layers)."""
        return self.n_layers - self.n_moe_layers

    def _mlp(self, inter: int) -> list[tuple[int, int]]:
        return [(inter, self.hidden), (inter, self.hidden), (self.hidden, inter)]  # gate, up, down

    def _attention(self) -> list[tuple[int, int]]:
        if self.attention == "gqa":
            q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
            return [(q, self.hidden), (kv, self.hidden), (kv, self.hidden), (self.hidden, q)]  # q, k, v, o
        qk = self.heads * (self.nope + self.rope)
        q = [(self.q_lora, self.hidden), (qk, self.q_lora)] if self.q_lora else [(qk, self.hidden)]
        return q + [
            (self.kv_lora + self.rope, self.hidden),  # kv_a_proj_with_mqa
            (self.heads * (self.nope + self.v_head), self.kv_lora),  # kv_b_proj
            (self.hidden, self.heads * self.v_head),  # o_proj
        ]

    def expert_bytes(self, dtype: str) -> int:
        """One routed expert: DeepSeek-V3 FP8 = 3 x 2048 x 7168 + 3 x 16 x 56 x 4 = 44,050,944."""
        return sum(matrix_bytes(r, c, dtype) for r, c in self._mlp(self.moe_inter))

    @property
    def expert_flops(self) -> int:
        """FLOPs of one (token, expert) pair: three H x I matmuls."""
        return 6 * self.hidden * self.moe_inter

    def layer_fixed(self, moe: bool, dtype: str) -> tuple[int, int]:
        """(weight bytes read once per step, FLOPs per token) of a layer apart from routed experts:
        attention, plus router and shared experts (MoE layer) or the dense MLP (dense layer)."""
        mlp = (self._mlp(self.shared_inter) if self.shared_inter else []) if moe else self._mlp(self.inter)
        mats = self._attention() + mlp
        nbytes = sum(matrix_bytes(r, c, dtype) for r, c in mats)
        params = sum(r * c for r, c in mats)
        if moe:  # router gate, kept in bf16 in FP8 checkpoints
            nbytes += self.n_experts * self.hidden * 2
            params += self.n_experts * self.hidden
        return nbytes, 2 * params

    def kv_per_token(self, context: int) -> tuple[int, int]:
        """(KV bytes, attention FLOPs) per token per layer over `context` cached tokens.

        MLA (absorbed): one latent + rope key per cached token; QK over kv_lora + rope, AV over kv_lora.
        GQA: a key and a value of kv_heads x head_dim per cached token; QK and AV over head_dim per query head.
        """
        if self.attention == "gqa":
            return (context * 2 * self.kv_heads * self.head_dim * KV_BYTES,
                    2 * self.heads * context * 2 * self.head_dim)  # fmt: skip
        width = self.kv_lora + self.rope
        return context * width * KV_BYTES, 2 * self.heads * context * (width + self.kv_lora)
