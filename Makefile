# fedsim: `make demo` (set up + quickstart run) and `make test` (set up + tests).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedsim-installed
TORCH_RANGE := torch>=2.4,<2.15
TORCH_CPU   := torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0

.PHONY: setup demo test test-fast bench docs clean

setup: $(STAMP)

# torch first: a CUDA build where an NVIDIA GPU is present, else a CPU build
# (the 2.13.0 CPU wheel when pip can see one offline, else PyTorch's CPU index).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing a CUDA build of torch"; \
		$(PY) -m pip install -q "$(TORCH_RANGE)"; \
	elif $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif $(PY) -m pip download -q --no-index --no-deps "$(TORCH_CPU)" -d "$$(mktemp -d)" >/dev/null 2>&1; then \
		echo "no GPU: installing the local CPU build $(TORCH_CPU)"; \
		$(PY) -m pip install -q "$(TORCH_CPU)"; \
	else \
		echo "no GPU: installing a CPU build of torch from $(TORCH_CPU_INDEX)"; \
		$(PY) -m pip install -q "$(TORCH_CPU)" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	fi
	$(PY) -m pip install -q -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedsim run experiments/quickstart.toml --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not deployment"

bench: $(STAMP)
	$(PY) experiments/bench_simulation.py --out runs/bench --clients 10 100 1000 --registered 10000:100

# docs/configuration.md and pyproject's app config from RunConfig; result tables included from what experiment runners wrote
docs: $(STAMP)
	$(VENV)/bin/fedsim keys --markdown > docs/configuration.md
	$(VENV)/bin/fedsim keys --pyproject
	$(PY) experiments/docs_tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache
