# Two commands set everything up: `make test` and `make train`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test train notebooks lint bench clean

$(STAMP): pyproject.toml
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
