# Two commands on a fresh machine:  `make run` (the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
CORES ?= all

.PHONY: setup run test test-fast report figures lint clean

$(VENV)/.installed: pyproject.toml
	bash workflow/setup.sh "$(VENV)" "$(EXTRAS)"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html
	$(VENV)/bin/skipbench show

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

figures: setup
	$(VENV)/bin/snakemake -R figures --cores $(CORES)

report: setup
	$(VENV)/bin/snakemake --report results/report.html

lint: setup
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results/*/ .snakemake
