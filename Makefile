# Two entry points on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: demo test lint format typecheck check venv clean-venv bench real bench-env

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

# torch is pinned to the local CPU build; GPU users install their CUDA build first (see README).
# FunASR is the ASR parity tests' oracle (never a runtime dependency): pinned, without its dependency tree (torchaudio
# cannot sit next to this torch), plus the few modules its model code imports (librosa is stubbed by the tests).
$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.2"
	$(BIN)/pip install -q -e ".[test,demo]"
	$(BIN)/pip install -q --no-deps "speakerlab==0.0.6"
	$(BIN)/pip install -q --no-deps "funasr==1.4.16" "kaldiio==2.18.1" "jaconv==0.5.0" "rapidfuzz==3.14.6" \
		"six==1.17.0" "requests==2.34.2" "urllib3==2.8.0" "idna==3.20" "certifi==2026.10.19.post1"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff lint + format check (configured in pyproject.toml); `make format` rewrites.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

# What CI runs, in this order.
check: lint typecheck test

demo: $(STAMP)
	$(BIN)/speakerforge demo --out $(DEMO_DIR)

# resemblyzer 0.1.4 (a pretrained GE2E encoder) is bench/accuracy.py's reference, never a speakerforge dependency:
# what it really imports, pinned, without its declared dependency tree (see recipes/shared-data/README.md).
bench-env: $(STAMP)
	$(BIN)/python -c "import resemblyzer" 2>/dev/null || $(BIN)/pip install -q --no-deps "resemblyzer==0.1.4" \
		"webrtcvad-wheels==2.0.14.post1" "librosa==0.11.0" "scipy==1.17.1" "numba==0.68.1" "llvmlite==0.50.0" \
		"lazy_loader==0.6" "decorator==5.3.1" "msgpack==1.2.4" "pooch==1.9.0" "platformdirs==4.14.9" "audioread==3.1.0"

# The real-speech recipe (recipes/shared-data/run.sh): trains on ../shared/data, prints the table against resemblyzer.
real: bench-env
	bash recipes/shared-data/run.sh

bench: $(STAMP)
	$(BIN)/python bench/fbank.py
	$(BIN)/python bench/models.py

clean-venv:
	rm -rf $(VENV)
