# Two commands a new user needs: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install serve test test-fast lint bench clean

install: $(VENV)/.installed

# torch is installed first and pinned so that nothing pulls a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

serve: install
	$(BIN)/rerankd serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench testing
	$(BIN)/ruff format --check src tests bench testing
	if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint deploy/Dockerfile deploy/Dockerfile.cuda; fi

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# The edit loop: no Ray, no subprocess servers (tests marked slow).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
