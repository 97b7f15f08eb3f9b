"""A tiny DeepSeek-V3 built offline: BPE tokenizer, seeded init, optional memorisation.

The embedded default needs a model whose dense variant passes a few HumanEval tasks on
a CPU in minutes, so skipping experts has something to lose. Random weights score 0;
a brief full-batch AdamW run on prompt + canonical solution makes the model reproduce
the solutions greedily (a memorisation demo, not a capable model).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, PreTrainedTokenizerFast
from skipbench.progress import track

from skipbench.io import atomic_path

log = logging.getLogger(__name__)

# DeepSeek-V3's own special tokens, ids 0 and 1 as in its release.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

# transformers fuses the routed experts into 3D parameters; the release names each one.
_FUSED_EXPERTS = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)")
_RELEASE_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any byte sequence encodes; decode(encode(s)) == s) with BOS prepended."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],  # ids 0, 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, clean_up_tokenization_spaces=False)


def release_config(arch: dict, vocab_size: int) -> dict:
    """config.json in the release's style: its routing keys plus the tiny shapes of `arch`."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "moe_layer_freq": 1,
        "norm_topk_prob": True,
        "num_key_value_heads": arch["num_attention_heads"],
        "num_nextn_predict_layers": 0,  # no MTP module in the tiny model
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        # YaRN with factor 1 is exactly the default rope (same frequencies, mscale 1), but it
        # makes vLLM-CPU take its PyTorch rope path: its C++ rotary kernel mis-rotates MLA's
        # strided q/k_pe views past position 0 (tests/test_vllm_parity.py). The real
        # DeepSeek-V3 release ships YaRN scaling, so it never meets that kernel either.
        "rope_scaling": {
            "type": "yarn",
            "factor": 1.0,
            "original_max_position_embeddings": arch.get("max_position_embeddings", 1024),
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "scoring_func": "sigmoid",  # vLLM creates the router bias only for sigmoid + noaux_tc
        "topk_method": "noaux_tc",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
        **arch,
    }


# Bit-identical training on any x86-64 machine with AVX2: one thread (a reduction's order
# depends on the thread count), deterministic algorithms, and the SIMD paths pinned before
# torch loads (skipbench.reproducible).
TRAIN_THREADS = 1


@contextlib.contextmanager
def deterministic(threads: int = TRAIN_THREADS):
    """Training and its greedy checks independent of the caller's thread count; restores torch's settings."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def build_model(config: dict, seed: int) -> DeepseekV3ForCausalLM:
    """Seeded random init of the architecture config.json describes (fp32)."""
    cfg = DeepseekV3Config.from_dict({k: v for k, v in config.items() if k != "quantization_config"})
    torch.manual_seed(seed)
    # The eager experts loop: the grouped_mm default leaves rows unset for out-of-range ids.
    return DeepseekV3ForCausalLM._from_config(cfg, experts_implementation="eager", dtype=torch.float32)


def set_selection_bias(model: DeepseekV3ForCausalLM, std: float, seed: int) -> int:
    """Fill every router's e_score_correction_bias with N(0, std) draws (seeded), before
    training; returns the number of routers set.

    DeepSeek-V3 adds this bias to the scores for SELECTION only (the weights use the
    unbiased scores); a zero bias would never exercise that difference, so rules that
    rank by weight (topk mask) and rules that re-run the router (router_topk, group,
    prune) would agree on the demo model. The bias is a fixed buffer: training adapts
    the model to it, as DeepSeek-V3's own training adapts to its balancing bias.
    """
    gen = torch.Generator().manual_seed(seed)
    routers = [m for m in model.modules() if type(m).__name__ == "DeepseekV3TopkRouter"]
    with torch.no_grad():
        for gate in routers:
            bias = gate.e_score_correction_bias
            bias.copy_(torch.randn(bias.shape, generator=gen, dtype=torch.float32).to(bias.dtype) * std)
    return len(routers)


def encode_pair(tokenizer: PreTrainedTokenizerFast, prompt: str, completion: str) -> tuple[list[int], int]:
    """Tokens of BOS + prompt + completion + EOS, and how many belong to BOS + prompt.

    Prompt and completion are encoded separately so the prompt tokens equal those an
    engine sees at inference (BPE across the seam would merge "\\n" with the indent)."""
    p = tokenizer(prompt).input_ids
    c = tokenizer(completion, add_special_tokens=False).input_ids
    return p + c + [tokenizer.eos_token_id], len(p)


@dataclass
class TrainLog:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    first_at_target: int | None = None  # first step whose loss reached the target
    checks: int = 0                     # calls of the `until` check


def memorise(
    model: DeepseekV3ForCausalLM, seqs: list[tuple[list[int], int]], lr: float, max_steps: int,
    target_loss: float, pad_id: int, until: Callable[[], bool] | None = None, check_every: int = 10,
    resume: Path | None = None, save_every: int = 25,
) -> TrainLog:
    """Full-batch fp32 AdamW on every token (prompt, completion, EOS) until loss <= target_loss
    and `until()` agrees (asked then, and every `check_every` steps after), or max_steps.

    A low loss can still leave one token of one solution wrong; `until` (a greedy check)
    keeps training until the solutions actually come out.

    `resume`: a file that holds model, optimiser and log every `save_every` steps; a killed
    run started again with the same file continues from its last save (bit-identical to an
    uninterrupted run: training is deterministic)."""
    B, L = len(seqs), max(len(ids) for ids, _ in seqs)  # B sequences, L tokens
    ids = torch.full((B, L), pad_id)
    mask = torch.zeros(B, L, dtype=torch.long)
    labels = torch.full((B, L), -100)
    for b, (seq, _) in enumerate(seqs):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        labels[b, : len(seq)] = ids[b, : len(seq)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    out = TrainLog()
    first = 1
    if resume is not None and Path(resume).exists():
        state = torch.load(resume, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        out = state["log"]
        first = out.steps + 1
        log.info("memorise: resuming after step %d from %s", out.steps, resume)
    t0 = time.perf_counter() - out.seconds
    bar = track(range(first, max_steps + 1), desc="memorise", unit="step")
    for step in bar:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out.losses.append(loss.item())
        out.steps = step
        bar.set_postfix(loss=f"{out.losses[-1]:.4f}")
        if step % 25 == 0:
            log.info("step %d loss %.4f", step, out.losses[-1])
        if resume is not None and step % save_every == 0:
            out.seconds = time.perf_counter() - t0
            with atomic_path(resume) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "log": out}, tmp)
        if out.losses[-1] <= target_loss:
            due = out.first_at_target is None or (step - out.first_at_target) % check_every == 0
            out.first_at_target = out.first_at_target or step
            if until is None:
                break
            if due:
                out.checks += 1
                if until():
                    break
                model.train()
    bar.close()
    out.seconds = time.perf_counter() - t0
    model.eval()
    log.info("memorise: %d steps, loss %.4f, %.1f s", out.steps, out.losses[-1], out.seconds)
    return out


@torch.no_grad()
def greedy_completions(
    model: DeepseekV3ForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy completion of each prompt, stopping at EOS (which is not part of the text)."""
    model.eval()
    texts = []
    for prompt in track(prompts, desc="greedy check", unit="task"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        )
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def release_state_dict(model: DeepseekV3ForCausalLM) -> dict[str, torch.Tensor]:
    """transformers names -> DeepSeek-V3 release names (one tensor per expert projection)."""
    out = {}
    for name, t in model.state_dict().items():
        m = _FUSED_EXPERTS.fullmatch(name)
        if m is None:
            out[name] = t.detach()
            continue
        prefix, kind = m.groups()
        for e in range(t.shape[0]):  # gate_up_proj [E, 2I, H] = gate rows then up rows
            if kind == "gate_up_proj":
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"] = gate.detach()
                out[f"{prefix}.{e}.up_proj.weight"] = up.detach()
            else:  # down_proj [E, H, I]
                out[f"{prefix}.{e}.down_proj.weight"] = t[e].detach()
    return out


def load_release_state_dict(model: DeepseekV3ForCausalLM, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of release_state_dict: stack per-expert tensors back into the fused ones."""
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    hf = {}
    for name, t in tensors.items():
        m = _RELEASE_EXPERT.fullmatch(name)
        if m is None:
            hf[name] = t
        else:
            prefix, e, kind = m.groups()
            experts.setdefault(prefix, {}).setdefault(kind, {})[int(e)] = t
    for prefix, kinds in experts.items():
        n = len(kinds["down_proj"])
        gate_up = [torch.cat([kinds["gate_proj"][e], kinds["up_proj"][e]], dim=0) for e in range(n)]
        hf[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        hf[f"{prefix}.down_proj"] = torch.stack([kinds["down_proj"][e] for e in range(n)])
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in hf.items()}, strict=True)
