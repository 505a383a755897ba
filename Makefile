# Two entry points for a fresh machine: `make demo` and `make test` (README).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
NGINX ?= /usr/sbin/nginx

.PHONY: install browser nginx demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[torch,test,dev]'
	touch $(STAMP)

# The browser tests (tests/test_ui_browser.py) drive Debian's chromium: Playwright's own browser
# build is a download from a host these machines cannot reach. Installed when missing, where
# this runs as root with apt-get; elsewhere the tests skip, saying why (under CI=true they fail).
browser:
	@if [ -x $(CHROMIUM) ]; then \
		:; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: $(CHROMIUM) is missing and installing it needs root and apt-get:" \
			"the browser tests will skip (apt-get install chromium)"; \
	else \
		echo "make browser: installing Debian's chromium package"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium \
			|| { apt-get update -q && apt-get install -y -q chromium; } \
			|| echo "make browser: chromium could not be installed: the browser tests will skip"; \
	fi

# The fan-out test (tests/test_fanout.py) runs Debian's nginx as the cache in front of a server.
# Installed as the browser is: when missing, where this runs as root with apt-get; elsewhere the
# test skips, saying why (under CI=true it fails).
nginx:
	@if [ -x $(NGINX) ]; then \
		:; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "make nginx: $(NGINX) is missing and installing it needs root and apt-get:" \
			"the fan-out test will skip (apt-get install nginx-light)"; \
	else \
		echo "make nginx: installing Debian's nginx-light package"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q nginx-light \
			|| { apt-get update -q && apt-get install -y -q nginx-light; } \
			|| echo "make nginx: nginx could not be installed: the fan-out test will skip"; \
	fi

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint browser nginx
	$(BIN)/pytest -n 2 --dist loadgroup --durations=15

bench: install
	$(BIN)/python bench/push_pull.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
