# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# As in an activated shell: DeepSpeed's JIT build then runs the venv's ninja, the one its op is prebuilt with below
# (another ninja version rewrites the build log and compiles the op again from scratch).
ACTIVATED := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: demo test test-all install clean

# TORCH_INDEX: an index to take torch from, e.g. https://download.pytorch.org/whl/cpu for the small CPU-only build
# (PyPI's Linux torch is the CUDA build, a few GB).
# DeepSpeed JIT-compiles its shared-memory communication op at its first init on CPU (minutes, with g++) into
# $TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions; built here by DeepSpeed's own call, the first train finds it
# ready. The call does nothing off Linux or where DeepSpeed picks a GPU, which do not use the op.
$(STAMP): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) -r requirements/cpu.txt
	$(BIN)/pip install --quiet -e '.[test]'
	@echo "Building DeepSpeed's CPU communication op with g++ (once, a minute or two)"
	$(ACTIVATED) $(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
		|| { echo "make: DeepSpeed's op did not build: install g++ (e.g. apt-get install g++) and run make again"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(ACTIVATED) $(BIN)/python -m launcher.demo $(DEMO_ARGS)

test: $(STAMP)
	$(ACTIVATED) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(ACTIVATED) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

# Removes the environment only: runs/ holds checkpoints and logs.
clean:
	rm -rf $(VENV)
