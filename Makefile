# Two entry points a fresh machine needs: `make serve` and `make test`.
# Both create .venv on first use and install the package with the pinned
# CPU build of torch from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test schemathesis lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

serve: install
	$(BIN)/nanochat-gateway serve --config config.toml $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

# Fuzz a live gateway from its /openapi.json for a bounded time (60 s unless ARGS="--max-time N").
schemathesis: install
	$(BIN)/python .ci/schemathesis.py $(ARGS)

lint: install
	$(BIN)/ruff check nanochat_gateway plugins tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
