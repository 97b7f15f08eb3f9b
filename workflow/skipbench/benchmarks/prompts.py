"""Prompt protocols: the text an engine completes for a task, what stops it, and how the
sample's program is read back from the completion.

`generation.prompt` picks one for every benchmark of a run:

- `completion` (base models, the tiny model): the task prompt as it is, HumanEval stop
  strings, program = prompt + completion (EvalPlus's direct-completion rule).
- `chat` (instruct models, as the EvalPlus leaderboard prompts them; evalplus 0.3.1):
  - prompt: `task["prompt"].strip() + "\\n"` (evalplus/codegen.py:80) wrapped by
    `make_raw_chat_prompt` (evalplus/provider/utility.py:25-51) in the model's chat template
    with EvalPlus's instruction and response prefixes (codegen.py:176-177); the reply
    continues inside the response's ```python block;
  - stop: EvalPlus's EOS list plus "\\n```\\n" (provider/base.py:23, provider/vllm.py:36);
  - program: the reply with tabs as four spaces (provider/vllm.py:68) passed through
    `evalplus.sanitize.sanitize(reply, entrypoint)` (codegen.py:89).
  EvalPlus's own functions build the prompt and sanitise the reply; nothing is rewritten.

LiveCodeBench tasks are prompted as LiveCodeBench prompts them (skipbench.benchmarks.livecodebench).
Prompts are built here, from the checkpoint's tokenizer, and handed to the engine as text,
so every engine sees the same prompt string.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from skipbench.benchmarks.tasks import Task, load_tasks

log = logging.getLogger(__name__)

PROTOCOLS = ("completion", "chat")

# Stop strings for completing a HumanEval-style function body: the next top-level
# statement starts (Codex paper set, spelled with the trailing space/paren).
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]

# evalplus/codegen.py:176-177 (the default, non-"perf" instruction).
EVALPLUS_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
                        "in a markdown code block:")  # fmt: skip
EVALPLUS_RESPONSE = ("Below is a Python script with a self-contained function that solves the problem and "
                     "passes corresponding tests:")  # fmt: skip


def evalplus_chat_stop() -> list[str]:
    """EvalPlus's stop strings for chat models: its EOS list plus the closing fence.

    A fresh list: EvalPlus's decoders extend the module-level EOS list in place."""
    from evalplus.provider.utility import EOS

    return [*EOS, "\n```\n"]


@dataclass(frozen=True)
class Prompter:
    """One protocol for one run: render(task) -> prompt, stop, program(task, completion)."""

    protocol: str  # completion | chat
    chat_template: Callable[[list[dict]], str] | None = None  # messages -> text ending where the reply starts
    tokenizer: Any = field(default=None, repr=False, compare=False)  # what EvalPlus's helper is given

    def render(self, task: Task) -> str:
        if task.lcb is not None:
            from skipbench.benchmarks.livecodebench import lcb_prompt

            return lcb_prompt(task, self)
        if self.protocol == "completion":
            return task.prompt
        from evalplus.provider.utility import make_raw_chat_prompt

        return make_raw_chat_prompt(task.prompt.strip() + "\n", EVALPLUS_INSTRUCTION, EVALPLUS_RESPONSE,
                                    self.tokenizer)  # fmt: skip

    def stop(self, task: Task | None, configured: list[str] | None) -> list[str]:
        """Stop strings: the config's `generation.stop` when given, else the protocol's."""
        if configured is not None:
            return list(configured)
        if task is not None and task.lcb is not None:
            from skipbench.benchmarks.livecodebench import lcb_stop

            return lcb_stop(self)
        return list(HUMANEVAL_STOP) if self.protocol == "completion" else evalplus_chat_stop()


def program_of(task: Task, completion: str) -> str:
    """The program a sample stands for, by the protocol its prompt was rendered with
    (task.protocol, task.prompt as rendered). Never raises: the completion is untrusted."""
    if task.lcb is not None:
        from skipbench.benchmarks.livecodebench import extract_code

        return extract_code(completion, task.protocol)
    if task.protocol == "completion":
        return task.prompt + completion
    return sanitized(completion.replace("\t", "    "), task.entry_point)


def sanitized(code: str, entry_point: str) -> str:
    """EvalPlus's sanitiser; on any failure inside it, the empty program (which fails)."""
    from evalplus.sanitize import sanitize

    try:
        return sanitize(code, entrypoint=entry_point)
    except Exception as e:  # noqa: BLE001 - untrusted text must not take the stage down
        log.warning("sanitize failed (%s: %s): empty program", type(e).__name__, e)
        return ""


def make_prompter(protocol: str, model_dir: str | Path | None) -> Prompter:
    """The run's prompter; `chat` reads the chat template of the checkpoint's tokenizer."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"generation.prompt: {protocol!r} is not one of {list(PROTOCOLS)}")
    if protocol == "completion":
        return Prompter("completion")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"generation.prompt: chat needs a chat template, and the tokenizer in {model_dir} "
                         "has none (use `completion` for base models)")  # fmt: skip

    def template(messages: list[dict]) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return Prompter("chat", template, tok)


def render_tasks(tasks: list[Task], prompter: Prompter) -> list[Task]:
    """The tasks as the engine sees them: `prompt` rendered, `protocol` recorded."""
    return [replace(t, prompt=prompter.render(t), protocol=prompter.protocol) for t in tasks]


def prepare_generation(bench_cfg: dict, generation_cfg: dict, model_dir: str | Path) -> tuple[list[Task], dict]:
    """(rendered tasks, generation settings with the stop strings resolved) of one benchmark."""
    prompter = make_prompter(str(generation_cfg.get("prompt", "completion")), model_dir)
    tasks = render_tasks(load_tasks(bench_cfg), prompter)
    stop = prompter.stop(tasks[0] if tasks else None, generation_cfg.get("stop"))
    return tasks, {**generation_cfg, "stop": stop}
