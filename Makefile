# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs on
# first use; later runs find the stamps and skip straight to the job. `make test` builds the documentation first
# (`make docs`, strict: a warning fails it), then runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned to the versions the project is tested with (docs/install.md).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo bench-quick docs test install clean-venv

# Trains a small VMamba from scratch on scikit-learn's digits (CPU, under 10 minutes), reports val top-1 and
# writes work_dirs/digits_demo/learning_curve.png.
demo: $(VENV)/.deps
	$(PY) tools/demo.py

bench-quick: $(VENV)/.deps
	$(PY) tools/benchmark.py --quick

# The site goes to site/; the API pages read the sources statically (nothing is imported, no GPU needed).
docs: $(VENV)/.deps
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

test: $(VENV)/.deps docs
	$(PY) -m pytest -n 2 --dist loadgroup -rs --durations=15 $(PYTEST_ARGS)

install: $(VENV)/.deps

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	touch $@

$(VENV)/.mmcv: $(VENV)/.torch tools/build_mmcv.sh
	tools/build_mmcv.sh $(PY)
	touch $@

$(VENV)/.deps: $(VENV)/.mmcv pyproject.toml
	$(PY) -m pip install -q -e '.[all,dev,docs]' $(TORCH_PINS)
	$(PY) -c "import pkg_resources, visionssm, timm, mmdet.models, mmseg.models, albumentations, mkdocs, mkdocstrings; print('[install] ok:', visionssm.__version__)"
	touch $@

clean-venv:
	rm -rf $(VENV)
