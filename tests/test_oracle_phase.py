"""Phase-aware rules in the transformers engine: the prompt pass dense, decode steps skipped."""

import torch

from skipbench.infer.engines import TransformersEngine
from skipbench.skip.strategies import SkipRule
from tiny_models import write_tiny_dsv3


def test_decode_only_rule_in_the_transformers_engine(tmp_path):
    model = write_tiny_dsv3(tmp_path / "model")
    rule = SkipRule("router_topk", k=1, decode_only=True)
    engine = TransformersEngine(model, rule, {"name": "transformers", "dtype": "float32"}, 0, tmp_path, trace=True)
    gens = engine.generate(["def f(x):\n", "x = ["], 5, [], 0)
    for r in engine.take_trace(gens):
        assert bool((r.keep[0].sum(-1) == 4).all())  # step 0: the prompt pass, dense
        assert bool((r.keep[1:].sum(-1) == 1).all())  # decode steps: the router with K' = 1
    # teacher-forced (one pass over prompt + completion): a prompt pass, so dense
    ids = torch.tensor([[5, 70, 200, 33]])
    with torch.no_grad():
        skipped = engine.model(ids).logits
        engine.set_rule(SkipRule("dense"))
        dense = engine.model(ids).logits
    assert torch.equal(skipped, dense)
    engine.close()
