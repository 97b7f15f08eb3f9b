# Stage 5: run every completion against the benchmark's tests in a sandbox.


rule execute:
    input:
        lib("execute", "sandbox", "sandbox_driver", "benchmarks", "harness", "groundtruth", "compare", "proctable"),
        samples=samples_for,
    output:
        results=f"{RUN}/execute/{{benchmark}}/{{variant}}.parquet",
    params:
        benchmark=lambda wc: BENCHMARKS[wc.benchmark],
        execution=config["execution"],
    log:
        f"{RUN}/logs/execute/{{benchmark}}/{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/execute/{{benchmark}}/{{variant}}.tsv",
    threads: workflow.cores
    conda:
        "../../envs/execute.yaml"
    script:
        "../scripts/execute.py"
