# Two commands: `make demo` and `make test`. Both create the environment if it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch; install a CUDA build yourself on a GPU machine (see README).
TORCH  ?= torch==2.13.0

.PHONY: demo test env lint clean view-check
env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: env
	$(VENV)/bin/mmccd demo --out results/demo --overwrite

# one pytest worker per core (at most 4), each with one torch thread: the suite's networks are tiny, so two
# processes on two cores finish far sooner than one process with two threads
test: env
	$(PY) -m pytest -q -n auto --maxprocesses 4

# a case view of a real BraTS case in headless Chromium (apt-get install chromium); needs $MMCCD_REAL_DATA
view-check: env
	$(PY) benchmarks/view_check.py --out results/view-check

lint: env
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf results .pytest_cache
