"""Hand-made report inputs (scores, throughput sweep, roofline predictions, traffic) whose
Pareto fronts and speedups are computed by hand in the tests that use them."""

from pathlib import Path

from skipbench.io import write_table
from skipbench.speed.roofline import PREDICTION_SCHEMA, VALIDATION_SCHEMA
from skipbench.score.stage import SCORES_SCHEMA
from skipbench.speed.throughput import THROUGHPUT_SCHEMA
from skipbench.speed.traffic import TRAFFIC_SCHEMA

# variant: (strategy, infer tokens/s, experts per token, pass@1 base, pass@1 plus)
VARIANTS = {
    "dense": ("dense", 100.0, 4.0, 0.9, 0.8),
    "top3": ("topk", 110.0, 3.0, 0.9, 0.7),
    "top2": ("topk", 120.0, 2.0, 0.6, 0.6),
    "top1": ("topk", 105.0, 1.0, 0.2, 0.1),
    "thr0.3": ("threshold", 115.0, 2.5, 0.8, 0.75),
}
# Hand-computed fronts of VARIANTS (in x order), quality y vs cost x:
FRONT_BASE_VS_TPS = ["top3", "thr0.3", "top2"]  # top3 dominates dense (same y, more tok/s)
FRONT_PLUS_VS_TPS = ["dense", "thr0.3", "top2"]  # thr0.3 dominates top3
FRONT_BASE_VS_EPT = ["top1", "top2", "thr0.3", "top3"]  # top3 dominates dense (fewer experts)
FRONT_PLUS_VS_EPT = ["top1", "top2", "thr0.3", "dense"]
# Throughput sweep (measured): variant -> {concurrency: output tok/s}
SWEEP = {"dense": {1: 10.0, 4: 30.0}, "top1": {1: 12.0, 4: 33.0}}
# Roofline whole-model skip_kernel speedups at batch 1 on h200 (dense 1 by definition)
PREDICTED_H200 = {"dense": 1.0, "top3": 1.3, "top2": 1.8, "top1": 2.5, "thr0.3": 1.5}
FRONT_PLUS_VS_PREDICTED = ["dense", "thr0.3", "top2", "top1"]  # thr0.3 dominates top3
FRONT_PLUS_VS_MEASURED = ["dense", "top1"]  # only the swept variants have a measured speedup


def scores_rows(benchmark: str = "he", with_plus: bool = True) -> list[dict]:
    rows = []
    for v, (strategy, tps, ept, base, plus) in VARIANTS.items():
        plus = plus if with_plus else None
        rows.append(dict(
            benchmark=benchmark, variant=v, strategy=strategy, params="{}", dataset="humaneval_plus",
            dataset_version="v0.1.10", dataset_sha256="x", tasks=10, samples=10,
            pass1_base=base, pass1_base_lo=max(0.0, base - 0.2), pass1_base_hi=min(1.0, base + 0.1),
            pass1_plus=plus, pass1_plus_lo=None if plus is None else max(0.0, plus - 0.2),
            pass1_plus_hi=None if plus is None else min(1.0, plus + 0.1),
            paired=10, delta_base=base - 0.9, mcnemar_p_base=0.5, delta_plus=None if plus is None else plus - 0.8,
            mcnemar_p_plus=None if plus is None else 0.25, tokens_per_s=tps, batch_size=10, engine="vllm",
            engine_version="0.32.0", device="cpu:x86_64x2", dtype="bfloat16",
            skip_path="none" if v == "dense" else "weight0", expert_kernel="vllm", routed_per_decode_token=ept, dense_experts_per_token=4.0,
            identical_to_dense=1.0 if v == "dense" else ept / 8, first_diff_token=None if v == "dense" else 10 * ept,
            time_factor=4.0, min_time_limit_s=1.0, sandbox="bwrap", status_counts="{}",
        ))  # fmt: skip
    # external samples: quality only, no strategy, no cost
    rows.append({**rows[0], "variant": "external", "strategy": None, "tokens_per_s": None, "routed_per_decode_token": None,
                 "engine": None, "device": None, "pass1_base": 1.0, "pass1_plus": 1.0 if with_plus else None})  # fmt: skip
    return rows


def write_scores(path: Path, rows: list[dict]) -> Path:
    write_table(path, rows, SCORES_SCHEMA)
    return path


def write_throughput(run_dir: Path) -> list[Path]:
    paths = []
    for v, sweep in SWEEP.items():
        rows = [dict(source="measured", model="tiny", variant=v, rule="{}", skip_path="none" if v == "dense" else "weight0", expert_kernel="vllm",
                     engine="vllm", engine_version="0.32.0", device="cpu:x86_64x2", device_kind="cpu", dtype="bfloat16",
                     tensor_parallel_size=1, expert_parallel=False, enforce_eager=True, cuda_graphs=False,
                     concurrency=c, requests=2 * c, prompt_len=32, output_len=32, output_tokens=64 * c,
                     duration_s=64 * c / tps, output_tok_s=tps, ttft_median_ms=1.0, ttft_p90_ms=1.0,
                     tpot_median_ms=1.0, tpot_p90_ms=1.0, rounds=2, interleaved=True) for c, tps in sweep.items()]  # fmt: skip
        paths.append(run_dir / f"throughput/{v}.parquet")
        write_table(paths[-1], rows, THROUGHPUT_SCHEMA)
    return paths


FLOOR_STRETCH = 1.5  # bytes-floor speedup - 1 = 1.5 x the calibrated one's
VALIDATION_ERROR = -0.4  # this-machine's predicted step time vs the engine's, every row


def write_predictions(path: Path) -> Path:
    """Predictions of three profiles: h200 and this-machine calibrated (band), h800 bytes floor only;
    and the validation table next to them (this-machine vs the engine, off by 40%)."""
    rows = []
    for hw, scale, cals in (("h200", 1.0, ("calibrated", "bytes_floor")), ("this-machine", 0.5, ("calibrated", "bytes_floor")),
                            ("h800", 1.0, ("bytes_floor",))):  # fmt: skip
        for v, speedup in PREDICTED_H200.items():
            for batch in (1, 4):
                for cal in cals:
                    s = 1 + (speedup - 1) * scale / batch * (FLOOR_STRETCH if cal == "bytes_floor" else 1)
                    for skip_path, sp in (("skip_kernel", s), ("weight0", 1.0)):
                        for layer in (-1, 1):
                            rows.append(dict(source="predicted", model="tiny", hardware=hw, device=hw, n_devices=1,
                                             weight_dtype="bf16", variant=v, skip_path=skip_path, calibration=cal,
                                             calibration_source=f"{hw} fit" if cal == "calibrated" else "",
                                             batch=batch, layer=layer, step_ms=1.0 / sp, speedup=sp,
                                             tokens_per_s=1000.0 * batch * sp))  # fmt: skip
    write_table(path, rows, PREDICTION_SCHEMA)
    val = [dict(kind="engine", hardware="this-machine", calibration=cal, device="cpu:x86_64x2", variant=v, batch=b,
                distinct_experts=1.0, predicted_ms=0.6 if cal == "calibrated" else 0.1, measured_ms=1.0,
                rel_error=VALIDATION_ERROR if cal == "calibrated" else -0.9, measured_by="vllm 0.32.0")
           for cal in ("bytes_floor", "calibrated") for v in ("dense", "top1") for b in (1, 4)]  # fmt: skip
    write_table(path.with_name("validation.parquet"), val, VALIDATION_SCHEMA)
    return path


def write_traffic(path: Path) -> Path:
    rows = []
    for v, ept in (("dense", 4.0), ("top1", 1.0), ("top2", 2.0)):
        for c in (1, 4, 16):  # 10 sequences traced: c = 16 replays at 10
            for layer in (-1, 1, 2, 3):
                distinct = min(16.0, ept * min(c, 10)) + (0 if layer == -1 else layer * 0.1)
                rows.append(dict(variant=v, concurrency=c, layer=layer, slots=4, steps=10, distinct_sequences=10,
                                 c_effective=min(c, 10), tokens_per_step=float(min(c, 10)),
                                 experts_per_token=ept, skip_rate=1 - ept / 4, slots_per_step=ept * min(c, 10),
                                 distinct_mean=distinct, distinct_p50=distinct, distinct_p90=distinct,
                                 bytes_per_expert=1000, bytes_per_step=distinct * 1000))  # fmt: skip
    write_table(path, rows, TRAFFIC_SCHEMA)
    return path


def write_run(run_dir: Path, benchmark: str = "he", optional: bool = True) -> dict:
    """A run directory with scores, and (optional=True) throughput, roofline and traffic."""
    files = dict(scores=write_scores(run_dir / "score/scores.parquet", scores_rows(benchmark)))
    if optional:
        files |= dict(throughput=write_throughput(run_dir), predictions=write_predictions(run_dir / "roofline/predictions.parquet"),
                      traffic={benchmark: write_traffic(run_dir / f"traffic/{benchmark}.parquet")})  # fmt: skip
    return files

