# Two commands on a fresh clone (CONTRACT §9):
#   make run    the whole stack in the foreground (Ctrl-C stops it all)
#   make test   the whole test suite
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test lint chaos bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/herald run

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# The console's browser tests drive Debian's Chromium (Playwright cannot download its
# own here). Installed when missing and we are root with apt; otherwise they skip.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .herald .pytest_cache .ruff_cache *.egg-info
