# Two commands on a fresh clone (CONTRACT §9):
#   make run    the whole stack in the foreground (Ctrl-C stops it all)
#   make test   the whole test suite
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test lint chaos bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/herald run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# Herald next to the naive Flask + Celery + twilio pattern (bench/README.md).
# Uses DATABASE_URL / REDIS_URL from the environment when set.
BENCH_ARGS ?= --messages 2000 --clients 8
bench: $(STAMP)
	$(VENV)/bin/python -m bench.compare $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .herald .pytest_cache .ruff_cache *.egg-info
