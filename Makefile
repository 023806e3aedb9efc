# Two commands a new user needs: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install install-gpu serve test test-fast test-gpu lint bench clean

install: $(VENV)/.installed

# uv (on PATH, or UV=/path/to/uv) installs the same pins faster than pip: parallel downloads, one
# resolver pass. It reads no pip configuration, so pip's find-links and constraint files (where a machine keeps its
# CPU torch wheel and its version caps) are handed to it; without them, torch==2.13.0 from PyPI is the CUDA build
# for pip and uv alike.
UV ?= $(shell command -v uv 2>/dev/null)
PIP_CONFIG = $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null)
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(call PIP_CONFIG,find-links))
CONSTRAINTS ?= $(or $(PIP_CONSTRAINT),$(call PIP_CONFIG,constraint))
UV_FLAGS = $(addprefix --find-links ,$(FIND_LINKS)) $(addprefix --constraint ,$(CONSTRAINTS))

# torch is pinned and installed with the rest (pip: first), so nothing pulls another torch build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifneq ($(UV),)
	$(UV) pip install -q --python $(BIN)/python $(UV_FLAGS) torch==2.13.0 -e '.[dev]'
else
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
endif
	touch $@

# A machine with an NVIDIA GPU: the gpu extra (onnxruntime-gpu) in place of the CPU onnxruntime, which owns the same
# module files (so it goes first, and the GPU wheel is reinstalled over whatever it removed). torch must be a CUDA
# build: on Linux x86-64, PyPI's torch==2.13.0 is.
install-gpu: install
	$(BIN)/pip install -q -e '.[dev,gpu]'
	$(BIN)/pip uninstall -y -q onnxruntime
	$(BIN)/pip install -q --force-reinstall --no-deps 'onnxruntime-gpu>=1.20'

serve: install
	$(BIN)/rerankd serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench testing
	$(BIN)/ruff format --check src tests bench testing
	if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint deploy/Dockerfile deploy/Dockerfile.cuda; fi

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# The edit loop, under 3 minutes on 2 cores: no Ray, no subprocesses, no long real-model runs (tests marked slow).
# The ten slowest are listed at the end, so a test that grows past the loop shows itself.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow" --durations=10

# The CUDA checks (tests marked gpu); each skips, naming what is missing, without a GPU or the gpu extra.
test-gpu: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m gpu -rs

clean:
	rm -rf $(VENV) build *.egg-info
