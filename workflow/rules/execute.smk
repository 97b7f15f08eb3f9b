# Stage 5: run every completion against the benchmark's tests in a sandbox.


rule execute:
    input:
        samples=samples_for,
        generated=after_generate_for,
    output:
        results=f"{RUN}/execute/{{benchmark}}/{{variant}}.parquet",
    params:
        code=code("execute"),
        benchmark=lambda wc: tasks_of(wc.benchmark),
        # bookkeeping (slot uids, the ground-truth cache's place) changes no verdict: not a
        # rerun trigger; the script reads the whole block from the config
        execution={k: v for k, v in config["execution"].items() if k not in ("uid_base", "groundtruth_dir")},
    log:
        f"{RUN}/logs/execute/{{benchmark}}/{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/execute/{{benchmark}}/{{variant}}.tsv",
    threads: workflow.cores
    conda:
        "../../envs/execute.yaml"
    script:
        "../scripts/execute.py"
