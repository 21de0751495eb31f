# Two commands do everything on a fresh machine:  make book   and   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test setup clean publish

$(STAMP): requirements.txt pyproject.toml notebooks/jupyterlab-overrides.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	# JupyterLab opens notebooks/*.py as notebooks (Jupytext), not in the text editor
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp notebooks/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

book: $(STAMP)
	$(PY) -m mocoxr.book run --profile quick
	$(PY) -m mocoxr.book build --profile quick

# push the built site to the gh-pages branch of the origin remote (refused when stale)
publish: $(STAMP)
	$(PY) -m mocoxr.book publish --profile quick

clean:
	rm -rf _build runs/quick
