# Two commands on a fresh machine:  `make demo` (set up + run the demo study + report)
#                                   `make test` (set up + run the test suite)
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: setup browser demo test lint clean-cache

setup: $(VENV)/.installed

# torch is pinned in pyproject.toml to a CPU build that installs fast here (no multi-GB CUDA wheels).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,hf,ray,digits]'
	touch $@

# Headless Chromium for the report's browser test (Debian package; needs root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(BIN)/sbif run specs/toy_hierarchy.yaml
	$(BIN)/sbif report specs/toy_hierarchy.yaml -o reports/toy_hierarchy.html

# Two xdist workers on this 2-core machine, whole files per worker (module fixtures built once); each worker gets
# its share of torch threads (tests/conftest.py) and the demo study is run once for both.
test: setup browser
	$(BIN)/pytest -q -n auto --dist loadfile

lint: setup
	$(BIN)/ruff check sbif_dsl tests benchmarks

clean-cache:
	rm -rf cache/sbif.duckdb cache/sbif.duckdb.wal cache/sbif.duckdb.lock cache/objects
