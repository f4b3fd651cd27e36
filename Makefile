# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

# TORCH_INDEX: an index to take torch from, e.g. https://download.pytorch.org/whl/cpu for the small CPU-only build
# (PyPI's Linux torch is the CUDA build, a few GB).
$(STAMP): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) -r requirements/cpu.txt
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m launcher.demo $(DEMO_ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

# Removes the environment only: runs/ holds checkpoints and logs.
clean:
	rm -rf $(VENV)
