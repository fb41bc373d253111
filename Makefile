# `make demo` and `make test` are all a fresh machine needs (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test smoke clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m search.run spaces/digits.py

smoke: $(STAMP)
	$(PY) -m search.run spaces/digits.py --smoke

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
