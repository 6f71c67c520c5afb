# Two commands set everything up: `make test` and `make train`.
# The Python that makes .venv: python3.11 where there is one, else python3 (3.11 or newer).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test train notebooks lint bench clean

NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'

$(STAMP): pyproject.toml
	@test ! -x $(BIN)/python || $(BIN)/python $(NEW_ENOUGH) || { \
	  echo "$(VENV) was made with $$($(BIN)/python -V 2>&1); making it again"; rm -rf $(VENV); }
	@test -x $(BIN)/python || $(PYTHON) $(NEW_ENOUGH) || { \
	  echo "vitlib needs Python 3.11 or newer, and $(PYTHON) is $$($(PYTHON) -V 2>&1)."; \
	  echo "Install Python 3.11, then run: make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check vitlib tests notebooks benchmarks
	SMOKE=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider

train: $(STAMP)
	$(BIN)/python -m vitlib train

notebooks: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py --out build/notebooks

bench: $(STAMP)
	$(BIN)/python -m vitlib bench

clean:
	rm -rf build runs .pytest_cache
