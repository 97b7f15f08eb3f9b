# Two commands on a fresh machine:  `make run` (the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
CORES ?= all

comma := ,
LOCK := requirements/lock-$(subst $(comma),-,$(EXTRAS)).txt

.PHONY: setup run test test-fast report figures lint clean lock

$(VENV)/.installed: pyproject.toml $(wildcard $(LOCK))
	bash workflow/setup.sh "$(VENV)" "$(EXTRAS)"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html
	$(VENV)/bin/skipbench show

# Test modules spread over one worker process per core, at most 4 (pytest-xdist): a module's
# tests stay together on one worker and share its fixtures; tests/conftest.py starts the
# longest modules first. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= auto
PYTEST := $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadscope --no-loadscope-reorder

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

figures: setup
	$(VENV)/bin/snakemake -R figures --cores $(CORES)

report: setup
	$(VENV)/bin/snakemake --report results/report.html

lint: setup
	$(VENV)/bin/snakemake --lint

# Re-pin every dependency: set up a scratch venv with open ranges, freeze it (keeps the header).
lock:
	mv -f $(LOCK) $(LOCK).old 2>/dev/null || true
	tmp=$$(mktemp -d) && bash workflow/setup.sh "$$tmp/venv" "$(EXTRAS)" \
	  && { grep '^#' $(LOCK).old 2>/dev/null; "$$tmp/venv/bin/pip" freeze --exclude-editable; } > $(LOCK) \
	  && rm -rf "$$tmp" $(LOCK).old

clean:
	rm -rf results/*/ .snakemake
