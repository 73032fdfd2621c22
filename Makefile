# The two commands of the README: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.p2m-installed
DEMO   ?= demo_out
PYTEST_ARGS ?=
# Two pytest workers; the tests that start clusters run in two lanes (tests/conftest.py).
# `make test PYTEST_WORKERS=0` runs everything in one process.
PYTEST_WORKERS ?= 2

.PHONY: setup test demo clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements-lock.txt
	$(PIP) install --quiet --disable-pip-version-check --no-deps panopticapi-lite==0.2.0
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# lint-imports checks the import contracts of pyproject.toml ([tool.importlinter]) first: seconds.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The demo keeps everything under $(DEMO)/: data, the MLflow store and its artifacts, models, plots.
# Its training sweep trains each setting (2 seeds, two trials at a time) for DEMO_TRAIN_ITERS iterations (experiments/train_tiny.yaml
# trains longer), so that the whole demo stays within 15 minutes on 2 cores.
DEMO_STORE := sqlite:///$(abspath $(DEMO))/mlflow.db
SWEEPS     := experiments/sweeps
DEMO_TRAIN_ITERS ?= 750

demo: setup
	$(PY) -m p2m_core.data.synthetic --out $(DEMO)/data --num-train 0 --num-val 8 --size 128 --seed 0
	$(PY) -m p2m_core.data.synthetic --config experiments/train_tiny.yaml --out $(DEMO)/train_data
	MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m ray_jobs.sweep $(SWEEPS)/table5.yaml $(SWEEPS)/table7.yaml \
		$(SWEEPS)/sinkhorn.yaml --set data.root=$(DEMO)/data
	@for table in table5 table7 sinkhorn; do \
		MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m analysis.tables --table $$table --format md || exit 1; echo; \
	done
	MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m ray_jobs.sweep $(SWEEPS)/table7_train.yaml \
		--set data.root=$(DEMO)/train_data --set tracking.output_dir=$(DEMO)/runs --set train.iters=$(DEMO_TRAIN_ITERS)
	MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m analysis.tables --table table7_train --format md
	MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m analysis.plots --out $(DEMO)/plots
	@MLFLOW_TRACKING_URI=$(DEMO_STORE) $(PY) -m p2m_core.tracking.ui p2m-pseudo p2m-train

clean-venv:
	rm -rf $(VENV)
