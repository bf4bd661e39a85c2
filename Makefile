# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# The CPU build of torch is the default; a GPU user picks another, e.g.
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= test
DEMO_DATA   ?= data/demo
DEMO_ARGS   ?= --studies 4 --subjects-per-study 50 --seed 0
PYTEST_ARGS ?=

BIN        := $(VENV)/bin
STAMP      := $(VENV)/.ichor-installed
LINT_STAMP := $(VENV)/.ichor-lint-installed
DOCS_STAMP := $(VENV)/.ichor-docs-installed

DEMO_STAMP := $(DEMO_DATA)/.complete
DEMO_RUN   := runs/pretrain_demo

.PHONY: venv demo demo-data pool-data probe-data test test-fast lint docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo-data: $(DEMO_STAMP)

# Generated once; `make clean` (or deleting $(DEMO_DATA)) makes it anew.
$(DEMO_STAMP): | $(STAMP)
	$(BIN)/ichor synth --out $(DEMO_DATA) $(DEMO_ARGS) --manifest-dir data_manifests/demo --overwrite
	touch $@

# The benchmark's unlabelled pre-training pool: studies 5-16 of the demo's seed (other sites, people).
POOL_DATA  ?= data/pool
POOL_STAMP := $(POOL_DATA)/.generated
pool-data: $(POOL_STAMP)

$(POOL_STAMP): | $(STAMP)
	$(BIN)/ichor synth --out $(POOL_DATA) --first-study 5 --studies 12 --subjects-per-study 125 --seed 0 --manifest-dir data_manifests/pool --overwrite
	touch $@

# The recipe-selection cohort: studies 17-20 of the demo's seed (other sites and people again), labelled.
# The online probe scores pre-training recipes on it, so that no recipe is chosen on the benchmark's
# own labelled cohorts (studies 1-4). 4 studies of 50, not 2: on 2 (8 patients of a class per study)
# the regional-mean floor read chance under the probe's protocol (benchmarks/probe_power.py).
PROBE_DATA  ?= data/probe
PROBE_STAMP := $(PROBE_DATA)/.generated-17-20
probe-data: $(PROBE_STAMP)

$(PROBE_STAMP): | $(STAMP)
	$(BIN)/ichor synth --out $(PROBE_DATA) --first-study 17 --studies 4 --subjects-per-study 50 --seed 0 --manifest-dir data_manifests/probe --overwrite
	touch $@

# Each fit writes runs/pretrain_demo/version_<N>/; export-encoder of the run folder takes the newest one's last.ckpt.
demo: $(DEMO_STAMP)
	$(BIN)/ichor manifest check data_manifests/demo/*.csv
	$(BIN)/ichor fit --config lightning_configs/common/demo.yaml --config lightning_configs/pretrain_demo.yaml
	$(BIN)/ichor export-encoder $(DEMO_RUN) --out $(DEMO_RUN)/encoder --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick subset: everything but the end-to-end runs marked `slow`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff, mypy and import-linter's layering contract (the `lint` extra), installed once beside the project; settings in pyproject.toml.
$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[lint]"
	touch $@

lint: $(LINT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The docs site (the `docs` extra, installed once beside the project) into site/; a warning fails the build.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .ichor_cache $(DEMO_DATA)
