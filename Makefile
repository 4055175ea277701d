# imagefs developer entry points. Everything runs from the project's .venv,
# which `make bootstrap` (scripts/bootstrap) creates and keeps up to date.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
BIN  := $(VENV)/bin
PY   := $(BIN)/python

.PHONY: bootstrap demo test check format bench bench-lazy bench-dedup bench-containerd reliability clean distclean

bootstrap:
	./scripts/bootstrap

demo: bootstrap
	$(PY) -m cli.demo

# pytest's non-zero exit (including 5 = "no tests collected") fails the target.
test: bootstrap
	$(MAKE) --no-print-directory check
	$(PY) -m pytest -q

check:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bootstrap
	$(PY) bench/convert.py

bench-lazy: bootstrap
	$(PY) bench/lazy.py --repeat 3

bench-dedup: bootstrap
	$(PY) bench/dedup.py

reliability: bootstrap
	$(PY) scripts/reliability_report.py

bench-containerd: bootstrap
	$(PY) bench/containerd.py --link both --repeat 3

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache bench/out demo-out
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
