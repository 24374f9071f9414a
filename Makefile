# Every target bootstraps .venv itself, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools demo test bench soak lint format clean

install: $(STAMP)

# Reinstall only when the dependency list changes (quick no-op otherwise).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,broker,spark,confluent,dev]'
	touch $(STAMP)

# promtool + prometheus for tests/deploy (Debian package `prometheus`); its service is never started.
# Java for Spark in local mode (`features --engine spark`; Java 17 is usually there already).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v java >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null; }

demo: install
	$(PY) -m fraudlite demo

test: install tools
	$(PY) -m pytest -q --durations=15

bench: install
	$(PY) benchmarks/run.py

# 10 minutes of `fraudlite serve` at half its maximum rate (issue 7); not part of test or bench.
soak: install
	$(PY) benchmarks/bench_soak.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
