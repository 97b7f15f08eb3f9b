# Stage 3b: dense routing statistics on held-out calibration text (prompt + canonical
# solution of tasks no benchmark evaluates), for variants whose strategy needs them.


rule calibrate:
    input:
        model=engine_model_dir,
    output:
        calibration=f"{RUN}/calibrate/calibration.parquet",
    params:
        code=code("calibrate"),
        calibration=config.get("calibration", {}),
        # held out from the benchmarks the model generates for: external samples are no
        # completion of this model, so an added one leaves the calibration (and all after it) alone
        benchmarks=GENERATED_BENCHMARKS,
    log:
        f"{RUN}/logs/calibrate.log",
    benchmark:
        f"{RUN}/benchmarks/calibrate.tsv",
    threads: workflow.cores
    resources:
        gpu=config["engine"]["gpus"],
        mem_mb=8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/calibrate.py"
