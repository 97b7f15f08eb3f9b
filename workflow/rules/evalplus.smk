# EvalPlus-native results beside every execute table: X_eval_results.json as EvalPlus 0.3.1
# writes it, so `evalplus.evaluate` and its tooling read skipbench's verdicts.


rule evalplus_results:
    input:
        samples=samples_for,
        execution=f"{RUN}/execute/{{benchmark}}/{{variant}}.parquet",
        generated=after_generate_for,
    output:
        results=f"{RUN}/execute/{{benchmark}}/{{variant}}_eval_results.json",
    params:
        code=code("evalplus_results"),
        benchmark=lambda wc: BENCHMARKS[wc.benchmark],
    log:
        f"{RUN}/logs/evalplus_results/{{benchmark}}/{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/evalplus_results/{{benchmark}}/{{variant}}.tsv",
    conda:
        "../../envs/execute.yaml"
    script:
        "../scripts/evalplus_results.py"


# EvalPlus's format is for EvalPlus's datasets: LiveCodeBench benchmarks get none.
EVALPLUS_RESULTS = [f"{RUN}/execute/{e['benchmark']}/{e['variant']}_eval_results.json" for e in SCORED
                    if e["benchmark"] not in SUBSET_SCORED]
