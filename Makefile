# The course's commands. Each target sets up what it needs (.venv, dependencies, data) on its own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deeplsp-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: setup course test lab images checkpoints student html nbgrader clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

## setup: virtual environment, dependencies, FashionMNIST and the text corpus (chapter 09)
setup: $(STAMP)
	@$(PY) -m deeplsp_helpers.data setup
	@$(PY) -m deeplsp_helpers.text_data setup

## course: execute every notebook headless, top to bottom, in place, printing each one's wall time;
## then write RESULTS.md and the README's results table from the notebooks' own outputs
course: setup
	@total=0; for nb in $(NOTEBOOKS); do \
	  start=$$(date +%s); \
	  TQDM_DISABLE=1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1800 --log-level=WARN "$$nb" || exit 1; \
	  secs=$$(( $$(date +%s) - start )); total=$$(( total + secs )); \
	  printf '%-50s %4d s\n' "$$nb" "$$secs"; \
	done; printf '%-50s %4d s\n' "all notebooks" "$$total"
	$(PY) tools/editions.py results

## test: lint, unit tests and every notebook under nbval
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

## student: the student edition, student/NN_….ipynb (solutions replaced by stubs, outputs cleared)
student: $(STAMP)
	$(PY) tools/editions.py student

## html: the executed course as a static site, site/index.html (Sphinx + myst-nb; never executes a notebook,
## fails if one is unexecuted or failed); opens from disk, loads nothing from the network
html: $(STAMP)
	$(PY) tools/course_site.py

## nbgrader: an nbgrader course folder, nbgrader/ (source notebooks with teacher-only hidden tests, config)
nbgrader: $(STAMP)
	$(PY) tools/nbgrader_course.py --out nbgrader

## lab: open the course in JupyterLab
lab: setup
	$(VENV)/bin/jupyter lab notebooks/00_getting_started.ipynb

## images: redraw the static figures under images/
images: $(STAMP)
	$(PY) images/make_images.py

## checkpoints: retrain every reference model with its recorded recipe and seed
checkpoints: setup
	$(PY) -m deeplsp_helpers.zoo train all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache student site build nbgrader
