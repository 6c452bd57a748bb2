# Two commands on a fresh clone:
#   make run    the whole stack in the foreground (Ctrl-C stops it all)
#   make test   the whole test suite
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test lint chaos bench clean test-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/herald run

test: $(STAMP) test-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# Herald next to the naive Flask + Celery + twilio pattern (bench/README.md).
# Uses DATABASE_URL / REDIS_URL from the environment when set.
BENCH_ARGS ?= --messages 2000 --clients 8
bench: $(STAMP)
	$(VENV)/bin/python -m bench.compare $(BENCH_ARGS)

# Tools some tests need from Debian: Chromium for the console's browser tests (Playwright
# cannot download its own here), docker-compose to validate docker-compose.yml and nginx
# to run deploy/nginx.conf in front of gunicorn (tests/e2e/test_proxy.py).
# Installed when missing and we are root with apt; otherwise those tests skip.
test-tools:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing="$$missing nginx"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .herald .pytest_cache .ruff_cache *.egg-info
