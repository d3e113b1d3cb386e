# The two commands a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test lint venv bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed: install python3.11 (or set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

run: venv
	@bash scripts/run.sh

test: venv
	@bash scripts/test.sh $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	@bash scripts/test.sh --bench-only

clean:
	rm -rf var $(VENV)
