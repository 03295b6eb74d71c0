# Set-up on a fresh machine with bare Python 3.11+: `make train` or `make test` creates .venv,
# installs jresnet with what that target needs, and runs it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build for the interop tests; torch==2.13.0 is the local CPU wheel on the dev machines.
TORCH ?= torch==2.13.0
# The publishers' own models, the references of the equivalence tests and benchmarks. --no-deps:
# their only unmet requirement is torch, which must stay the build installed above.
REFERENCE ?= torchvision==0.28.0 timm==1.0.31

WORKDIR ?= runs/digits

.PHONY: train test lint demo clean

# Two stamps: training needs only the `train` extra (no torch); the tests add torch, the
# references and the dev tools on top.
$(VENV)/.installed-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-train
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps $(REFERENCE)
	$(PY) -m pip install -q -e ".[dev,torch]"
	touch $@

# The main job: ResNet-20 on the embedded digits dataset, offline, a few minutes on 2 CPU cores.
train: $(VENV)/.installed-train
	$(PY) train.py --config configs/digits.py --workdir $(WORKDIR)

demo: $(VENV)/.installed-train
	$(PY) -c "import jresnet; print(jresnet.summary(jresnet.ResNet50(num_classes=10), (1, 224, 224, 3)))"

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: $(VENV)/.installed-test
	$(PY) -m ruff check jresnet tests configs bench train.py

clean:
	rm -rf $(VENV) .pytest_cache
