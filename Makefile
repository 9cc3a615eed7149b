# make demo : set everything up and run the demo study (CPU, SQLite, generated data)
# make test : set everything up and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup system-deps bench-loader clean

$(BIN)/swipr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dask,postgres]'
	touch $@

setup: $(BIN)/swipr

system-deps:
	bash scripts/system-deps.sh

demo: setup
	@[ -f demo-data/pics.db ] || $(BIN)/swipr demo-data demo-data
	$(BIN)/swipr study run studies/demo.toml
	$(BIN)/swipr study best studies/demo.toml

test: setup system-deps lint
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

# pyflakes + bugbear, and the type checker on the three packages (configured in pyproject.toml)
lint: setup
	$(BIN)/ruff check swipr_core objectives search tests bench
	$(BIN)/mypy

clean:
	rm -rf demo-data studies/*.db studies/*.labels.csv* studies/.swipr-cache
