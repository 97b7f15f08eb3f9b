"""Calibration text held out from every evaluated task: normalised text and near duplicates.

Two tasks count as the same when their normalised text is equal, or nearly the same when
the Jaccard similarity of their normalised token 3-gram sets reaches NEAR (0.8). The
normalisation drops what does not change a program's meaning to a model that memorises
text: comments, blank lines, indentation and every run of whitespace, and the layout of
string literals (a docstring re-wrapped or re-indented is the same docstring). It works
on Python source through `tokenize`; text that does not tokenize (prose prompts, broken
code) falls back to dropping `#` comments and collapsing whitespace.

The check runs across datasets: a HumanEval calibration task is compared with MBPP+
tasks too (the same function can appear in both).
"""

from __future__ import annotations

import io
import re
import tokenize

NEAR = 0.8  # Jaccard similarity of token 3-gram sets at which two texts are near duplicates
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def _squash(text: str) -> str:
    return " ".join(text.split())


def normalise(text: str) -> str:
    """Source text without comments, with whitespace (inside string literals too) collapsed."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        return _squash(re.sub(r"#[^\n]*", "", text))
    out = []
    for t in toks:
        if t.type in _SKIP:
            continue
        out.append(_squash(t.string) if t.type == tokenize.STRING else t.string)
    return " ".join(out)


def shingles(normalised: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    words = normalised.split()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class EvaluatedTexts:
    """Normalised texts of every evaluated task (any dataset), to test candidates against."""

    def __init__(self, tasks):
        """tasks: (label, text) pairs, label naming the task (e.g. 'humaneval HumanEval/3')."""
        self.items = []
        for label, text in tasks:
            norm = normalise(text)
            self.items.append((label, norm, shingles(norm)))

    def clash(self, text: str) -> tuple[str, float] | None:
        """(label of the most similar evaluated task, similarity) if `text` equals or nearly
        equals one after normalisation; None when it is held out."""
        norm = normalise(text)
        grams = shingles(norm)
        best = None
        for label, other, other_grams in self.items:
            sim = 1.0 if norm == other else jaccard(grams, other_grams)
            if sim >= NEAR and (best is None or sim > best[1]):
                best = (label, sim)
        return best
