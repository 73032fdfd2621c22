# The two commands of the README: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.p2m-installed
DEMO   ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup test demo clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements-lock.txt
	$(PIP) install --quiet --disable-pip-version-check --no-deps panopticapi-lite==0.2.0
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m p2m_core.data.synthetic --out $(DEMO)/data --num-train 24 --num-val 8 --size 128 --seed 0
	$(PY) -m p2m_core.data.points --panoptic-json $(DEMO)/data/panoptic_val.json \
		--panoptic-dir $(DEMO)/data/panoptic_val --out $(DEMO)/data/points_val.json --seed 0
	$(PY) -m p2m_core.evaluation --gt-json $(DEMO)/data/panoptic_val.json \
		--pred-json $(DEMO)/data/panoptic_val.json --out $(DEMO)/pq_gt_vs_gt.json
	$(PY) -m p2m_core.pseudo.evaluate --config experiments/ablation_synthetic.yaml \
		--data-root $(DEMO)/data --split val --source oracle_corrupt --sweep --overlays 4 \
		--out $(DEMO)/ablation

clean-venv:
	rm -rf $(VENV)
