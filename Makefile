# Two commands a new user needs (see README): `make quickstart` and `make test`.
# Both create .venv on first use; pip takes torch from this machine's disk when it can.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup quickstart test test-multihost lint docs bench mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/mnistkit run recipes/quickstart.yaml

# Two workers by default (TEST_WORKERS=0: one process); --dist loadfile keeps each test file on one
# worker, so a module's fixture (a trained run, a server) is made once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadfile

# The two-host tests alone (network namespaces joined by a veth pair, tests/netns.py; root). They
# are part of `make test` too.
test-multihost: $(STAMP)
	$(VENV)/bin/python -m pytest -q -rs -m multihost

lint: $(STAMP)
	$(VENV)/bin/ruff check mnistkit tests bench

docs: $(STAMP)
	$(VENV)/bin/python -m mnistkit.recipe.reference > docs/recipe.md

bench: $(STAMP)
	$(VENV)/bin/python bench/train_speed.py

# Mutation testing of the code where a wrong answer is silent (docs/testing.md). The modules and
# functions it mutates, and the tests it runs, are listed at the top of tools/mutation.py.
# `make mutation ONLY="improves judge_epoch"`: only those functions (or module paths).
mutation: $(STAMP)
	$(VENV)/bin/python tools/mutation.py $(ONLY)
