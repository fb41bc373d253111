# `make demo` and `make test` are all a fresh machine needs (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow smoke clean test-data test-servers docs

# Real product photos for the tests (Debian's dataset-fashion-mnist); best effort, tests
# that need them skip with a message when they cannot be installed (no root, no apt).
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m search.run spaces/digits.py

smoke: $(STAMP)
	$(PY) -m search.run spaces/digits.py --smoke

# What CI runs (.ci/run): everything but the tests marked slow, on two pytest-xdist workers
# (tests that share a costly fixture kept on one: tests/conftest.py), in well under 30 minutes.
test: $(STAMP) test-data test-servers
	$(VENV)/bin/ruff check search tests bench spaces
	$(VENV)/bin/mypy search
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup --durations=10

# Multi-minute end-to-end checks: the report's spaces as written, on small real stand-ins of their data.
test-slow: $(STAMP) test-data test-servers
	$(PY) -m pytest -q -m slow --durations=10

test-data:
	@test -f $(FASHION) || apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	  || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) \
	  || echo "note: could not install dataset-fashion-mnist; tests that need it will skip"

# The README's and docs/vocabulary.md's tables of hyperparameters, backbones and settings, from the registries.
docs: $(STAMP)
	$(PY) -m search.vocabulary --write README.md docs/vocabulary.md

# PostgreSQL's server programs, for the tests that run workers against a throwaway cluster
# (tests/servers); best effort, those tests skip with a message when there are none.
test-servers:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt-get install -y -qq postgresql >/dev/null 2>&1 \
	  || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1) \
	  || echo "note: could not install postgresql; tests that need a PostgreSQL server will skip"

clean:
	rm -rf runs .pytest_cache
