# Stage 3: build and self-test the MoE kernels for the device at hand.


rule build_kernels:
    input:
        model=engine_model_dir,
    output:
        manifest=report(
            f"{RUN}/kernels/manifest.parquet",
            caption="../report/kernels.rst",
            category="2. Kernels",
        ),
    params:
        code=code("build_kernels"),  # with the kernel sources it imports
        kernels=config["kernels"],
        # tuned and self-tested at the expert shapes one tensor-parallel rank runs
        tensor_parallel_size=config["engine"].get("tensor_parallel_size", 1),
    log:
        f"{RUN}/logs/build_kernels.log",
    benchmark:
        f"{RUN}/benchmarks/build_kernels.tsv",
    threads: workflow.cores
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/build_kernels.py"
