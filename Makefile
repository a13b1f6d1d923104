# Everything a fresh machine needs, from pinned files only.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test ui lint setup clean-data

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

## Run the whole pipeline on the bundled sample documents (offline stand-in LLM by default).
demo: $(STAMP)
	$(VENV)/bin/agentinstruct demo

## Lint, then run the test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

## Dagster UI on http://127.0.0.1:3000 with the demo's instance.
ui: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/data/dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean-data:
	rm -rf data
