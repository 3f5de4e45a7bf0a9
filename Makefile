# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench lint format build-demo clean browser-deps

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the pinned CPU wheel, so nothing later pulls a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[demo,test,bench]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/surge serve

test: $(STAMP) browser-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m benchmarks.run

build-demo: $(STAMP)
	$(BIN)/surge build-demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The dashboard's browser test drives Debian's chromium through chromium-driver (no
# browser download: nothing outside the package registries can be reached). Installed
# when running as root; otherwise, or where apt fails, the browser test skips.
BROWSER_PACKAGES := chromium chromium-driver
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "chromium/chromium-driver missing (need root and apt-get to install them):" \
			"the dashboard browser test will skip"; exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 \
			&& apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null 2>&1; } \
		|| echo "could not install $(BROWSER_PACKAGES): the dashboard browser test will skip"

clean:
	rm -rf $(VENV) .surge
