"""Prompt protocols: `chat` equals EvalPlus 0.3.1's own codegen (prompt and sanitised
program) for the same reply; both engines serve the same prompts and extract the same code."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from skipbench.benchmarks.tasks import Task, load_benchmark
from skipbench.infer.stage import INFER_SUMMARY_SCHEMA, run_infer
from skipbench.io import read_jsonl
from skipbench.benchmarks.prompts import (EVALPLUS_INSTRUCTION, EVALPLUS_RESPONSE, HUMANEVAL_STOP, evalplus_chat_stop,
                               make_prompter, prepare_generation, program_of, render_tasks)
from tiny_models import write_tiny_dsv3, write_tokenizer
from shared_data import HUMANEVAL_PLUS, needs_shared_data

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

REPLIES = [
    "```python\ndef has_close_elements(numbers, threshold):\n\treturn any(abs(a - b) < threshold "
    "for i, a in enumerate(numbers) for b in numbers[i + 1:])\n\nprint(has_close_elements([1.0], 0.5))\n",
    "Sure! Here it is:\n```python\nimport math\n\ndef helper(x):\n    return x\n\n"
    "def has_close_elements(numbers, threshold):\n    return False\n```\nassert True\n",
    "I cannot help with that.",
    "def broken(:\n    pass",
]


def chat_tokenizer_dir(root: Path) -> Path:
    write_tokenizer(root)
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    (root / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": TEMPLATE}))
    return root


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random DeepSeek-V3 whose tokenizer has a chat template and which writes letters.

    A random byte-level model writes invalid UTF-8, which vLLM's detokenizer withholds and
    transformers replaces, so the two texts could not be compared. Here the head reads one
    hidden unit (its sign depends on every layer, the MoE ones included): a-m for one sign,
    n-z for the other, one letter's weight larger than the rest's."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    model = write_tiny_dsv3(tmp_path_factory.mktemp("chat") / "model")
    chat_tokenizer_dir(model)
    (weights,) = model.glob("*.safetensors")
    state = load_file(weights)
    tok = AutoTokenizer.from_pretrained(model)
    state["model.norm.weight"] = torch.zeros_like(state["model.norm.weight"])
    state["model.norm.weight"][0] = 1.0
    head = torch.zeros_like(state["lm_head.weight"])
    for i, ch in enumerate("abcdefghijklm"):
        head[tok.convert_tokens_to_ids(ch), 0] = 1.0 + 0.05 * i
        head[tok.convert_tokens_to_ids("nopqrstuvwxyz"[i]), 0] = -(1.0 + 0.05 * i)
    state["lm_head.weight"] = head
    save_file(state, weights, metadata={"format": "pt"})
    return model


@needs_shared_data
def test_chat_prompt_and_program_equal_evalplus_codegen(tmp_path, monkeypatch):
    """EvalPlus's codegen loop, driven by a decoder that answers with fixed replies, is the oracle."""
    from evalplus.codegen import codegen
    from evalplus.provider.base import DecoderBase
    from evalplus.provider.utility import make_raw_chat_prompt

    import evalplus.data.humaneval

    monkeypatch.setattr(evalplus.data.humaneval, "HUMANEVAL_OVERRIDE_PATH", str(HUMANEVAL_PLUS))  # read at its import
    prompter = make_prompter("chat", chat_tokenizer_dir(tmp_path / "tok"))
    seen_prompts = []

    class Replay(DecoderBase):
        def __init__(self, reply):
            super().__init__("replay", instruction_prefix=EVALPLUS_INSTRUCTION, response_prefix=EVALPLUS_RESPONSE)
            self.reply = reply

        def is_direct_completion(self) -> bool:
            return False

        def codegen(self, prompt, do_sample=True, num_samples=200):  # as provider/vllm.py does
            seen_prompts.append(make_raw_chat_prompt(prompt, self.instruction_prefix, self.response_prefix,
                                                     prompter.tokenizer))  # fmt: skip
            return [self.reply.replace("\t", "    ")]

    bench = load_benchmark({"dataset": "humaneval_plus", "path": str(HUMANEVAL_PLUS), "tasks": 1})
    task = bench.tasks[0]
    rendered = prepare_generation({"dataset": "humaneval_plus", "path": str(HUMANEVAL_PLUS), "tasks": 1},
                                  {"prompt": "chat"}, tmp_path / "tok")[0][0]  # fmt: skip
    for i, reply in enumerate(REPLIES):
        target = tmp_path / f"samples-{i}.jsonl"
        codegen(str(target), Replay(reply), "humaneval", greedy=True, n_samples=1, id_range=(0, 1))
        (expected,) = read_jsonl(target)
        assert expected["task_id"] == task.task_id
        assert rendered.prompt == seen_prompts[-1]
        assert rendered.prompt.endswith("```python\n") and task.prompt.strip() in rendered.prompt
        assert program_of(rendered, reply) == expected["solution"]


def test_protocol_defaults_and_refusals(tmp_path):
    assert make_prompter("completion", None).stop(None, None) == HUMANEVAL_STOP
    assert make_prompter("completion", None).stop(None, ["x"]) == ["x"]
    assert evalplus_chat_stop()[-1] == "\n```\n" and "\nif __name__" in evalplus_chat_stop()
    write_tokenizer(tmp_path / "plain")
    with pytest.raises(ValueError, match="chat needs a chat template"):
        make_prompter("chat", tmp_path / "plain")
    with pytest.raises(ValueError, match="generation.prompt"):
        make_prompter("fim", None)
    task = Task("T/0", "def f():\n", "f", "")
    assert program_of(task, "    return 1\n") == "def f():\n    return 1\n"


def test_sanitiser_failure_is_an_empty_program(monkeypatch):
    import evalplus.sanitize

    def explode(code, entrypoint=None):
        raise RecursionError("deep")

    monkeypatch.setattr(evalplus.sanitize, "sanitize", explode)
    assert program_of(Task("T/0", "p", "f", "", protocol="chat"), "```python\nx\n```") == ""


@pytest.mark.slow
@pytest.mark.vllm
def test_both_engines_serve_the_chat_prompt_and_extract_the_same_code(chat_model, tmp_path):
    pytest.importorskip("vllm")
    bench = [Task(f"T/{i}", p, "f", "") for i, p in enumerate(['def f(x):\n    """Double x."""\n',
                                                                 'def f(s):\n    """Reverse s."""\n'])]  # fmt: skip
    prompter = make_prompter("chat", chat_model)
    tasks = render_tasks(bench, prompter)
    assert all(t.prompt.startswith("<|user|>\nPlease provide a self-contained") for t in tasks)
    gen = {"max_new_tokens": 8, "seed": 0, "batch_size": 2, "stop": prompter.stop(tasks[0], None)}
    engines = {"transformers": {"name": "transformers", "dtype": "float32"},
               "vllm": {"name": "vllm", "dtype": "float32", "max_model_len": 512, "enforce_eager": True,
                        "tensor_parallel_size": 1, "gpus": 0, "extra": {}}}  # fmt: skip
    out = {}
    for name, engine in engines.items():
        d = tmp_path / name
        run_infer(chat_model, tasks, "dense", {"strategy": "dense"}, engine, gen, d / "samples.jsonl",
                  d / "generations.parquet", d / "summary.parquet", cache_dir=d / "cache")
        out[name] = (read_jsonl(d / "samples.jsonl"), pq.read_table(d / "generations.parquet").to_pylist(),
                     pq.read_table(d / "summary.parquet", schema=INFER_SUMMARY_SCHEMA).to_pylist()[0])
    (ts, tg, tsum), (vs, vg, vsum) = out["transformers"], out["vllm"]
    assert [g["token_ids"] for g in vg] == [g["token_ids"] for g in tg]
    assert [g["prompt_tokens"] for g in vg] == [g["prompt_tokens"] for g in tg]  # one prompt string, same tokens
    assert all(g["completion"].isalpha() for g in tg)  # text both engines can spell out
    assert [g["completion"] for g in vg] == [g["completion"] for g in tg]
    assert [s["solution"] for s in vs] == [s["solution"] for s in ts]
    assert [s["solution"] for s in ts] == [program_of(t, g["completion"]) for t, g in zip(tasks, tg)]
    assert tsum["prompt_protocol"] == vsum["prompt_protocol"] == "chat"
