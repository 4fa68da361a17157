# stackwise: `make report` and `make test` are the two commands a newcomer needs (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       ?= .venv
# torch goes in first, so that the package's open torch range is already met: a bare `torch`
# requirement on a machine without torch pulls a multi-GB CUDA build. Pick your build here.
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
# The install is redone when pyproject.toml's content or TORCH_SPEC changes (not its mtime:
# nbdev-export rewrites pyproject.toml on every run).
DEPS_HASH  := $(shell { cat pyproject.toml; echo '$(TORCH_SPEC)'; } | md5sum | cut -c1-12)
STAMP      := $(VENV)/.installed-$(DEPS_HASH)
NB         ?=
ARGS       ?=

.PHONY: help install test report docs lab experiment execute readme gpu-pack gpu-rehearse clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## create .venv (if missing) and install stackwise with its dev tools; reused while pyproject.toml is unchanged

test: $(STAMP)  ## notebooks and package in step, README in step, nbdev-test on the notebooks, then pytest
	@snap() { find nbs stackwise -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 md5sum; }; \
	before=$$(snap); $(BIN)/nbdev-export; $(BIN)/nbdev-clean; after=$$(snap); \
	if [ "$$before" != "$$after" ]; then \
	  diff <(echo "$$before") <(echo "$$after") | sed -n 's/^> /changed: /p'; \
	  echo "nbdev-export/nbdev-clean changed the files above: the package or notebooks were out of step. Review and commit them."; exit 1; fi
	$(BIN)/stackwise readme --check
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest -q -p no:cacheprovider

report: $(STAMP)  ## run the default experiments on this machine, render the site into _site/, print its path
	$(BIN)/stackwise report

docs: $(STAMP)  ## render the site into _site/ from the notebooks and results/ (no experiments)
	$(BIN)/stackwise docs

lab: $(STAMP)  ## JupyterLab on the notebooks
	$(BIN)/jupyter lab nbs

experiment: $(STAMP)  ## run one experiment: make experiment NB=hardware ARGS="size=2048 min_time=0.5"
	@if [ -z "$(NB)" ]; then echo 'make experiment needs NB=<name>, e.g. make experiment NB=hardware ARGS="size=2048"; experiments:'; $(BIN)/stackwise experiment --list; exit 2; fi
	$(BIN)/stackwise experiment $(NB) $(ARGS)

execute: $(STAMP)  ## re-run every notebook's cells (slow ones too) and save their outputs, for the site
	$(BIN)/nbdev-test --flags slow --save --n-workers 2 --skip-folder-re '^(report$$|[_.])'
	$(BIN)/nbdev-clean

readme: $(STAMP)  ## regenerate README.md from nbs/index.ipynb
	$(BIN)/stackwise readme

gpu-pack: $(STAMP)  ## fill .gpu/ (git-ignored) with the wheels and data the GPU image lacks; prints the sizes, refuses past 60 MiB with the checkout
	$(BIN)/stackwise gpu --pack $(if $(DATA),--data $(DATA),)

gpu-rehearse: $(STAMP)  ## stackwise gpu --dry-run in an environment pinned like the GPU image, from packed wheels only: make gpu-rehearse PINNED_PY=/work/gpuenv/bin/python
	@test -n "$(PINNED_PY)" || { echo 'make gpu-rehearse needs PINNED_PY=<python of an environment pinned like the GPU image> (chapter 55_bench.gpu says how to make one)'; exit 2; }
	@d=$$(mktemp -d); v=$$($(PINNED_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	$(BIN)/python -c "from stackwise.bench.gpu_pack import build_pack; build_pack('$$d/pack', $(if $(DATA),'$(DATA)',None), python_version='$$v')" && \
	$(PINNED_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $$d/site $$d/pack/wheels/*.whl && \
	time env PYTHONPATH=$$d/site:$$PWD STACKWISE_DATA=$$d/pack/data HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 \
	  $(PINNED_PY) -m stackwise.cli gpu --dry-run --out $$d/out --results $$d/results; rc=$$?; rm -rf $$d; exit $$rc

clean:  ## remove build outputs (_site, _proc); keeps .venv and results/
	rm -rf _site _proc
