# Stage 5: run every completion against the benchmark's tests in a sandbox.


rule execute:
    input:
        samples=samples_for,
    output:
        results=f"{RUN}/execute/{{benchmark}}/{{variant}}.parquet",
    params:
        code=code("execute"),
        benchmark=lambda wc: tasks_of(wc.benchmark),
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
