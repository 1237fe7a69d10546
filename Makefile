# Two commands on a fresh machine:  `make run` (quick training run, leaves a report) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick
N_WORKERS ?= 2
export OMP_WAIT_POLICY := PASSIVE
export PYTHONHASHSEED := 0

.PHONY: install run smoke test test-nbs test-py export clean-nbs check-sync lab docs docs-install readme-tables

# uv installs in seconds what pip takes minutes for; it reads no pip.conf, so pip's find-links (where a CPU wheel of
# torch may lie on local disk) is handed on. INSTALLER=pip installs with pip alone.
# Both write the bytecode at install time (uv does not by default): where PYTHONDONTWRITEBYTECODE is set, as on CI's
# machines, nothing else would, and every stage kernel, fold worker and command would compile torch, pandas and
# scikit-learn from source again (on a fresh clone `make run` took 532 s without it, 322 s with it)
INSTALLER ?= uv
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
ifeq ($(INSTALLER),uv)
PIP_INSTALL = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
else
PIP_INSTALL = $(BIN)/pip install --quiet --compile
endif

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip $(if $(filter uv,$(INSTALLER)),uv)
	# the CPU wheel of torch first; an unpinned torch would pull a multi-GB CUDA build
	$(PIP_INSTALL) "torch==2.13.0"
	$(PIP_INSTALL) -e ".[train,pipeline,lab,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	$(BIN)/python -m compileall -q macd_nb > /dev/null   # the project's own bytecode too (an editable install has none)
	touch $@

install: $(BIN)/.installed

run: install  ## quick training run on the synthetic market; prints where the report is
	$(BIN)/macd-nb run --profile $(PROFILE)

smoke: install
	$(BIN)/macd-nb run --profile smoke

# the notebooks' progress while they run beside pytest (the last line says how many ran; a failure is printed whole)
NBS_LOG := _docs/test-nbs.log
RUN_NBS = $(BIN)/python docs/build.py --execute-only --workers $(N_WORKERS)

# every notebook on its defaults and pytest, side by side: on 2 cores each fills the other's waits (kernel starts,
# subprocesses, file locks); one after the other they left a core idle 17% of the notebooks' time
test: install  ## every notebook on its defaults (`test-nbs`) beside pytest (`test-py`); fails if either fails
	@mkdir -p $(dir $(NBS_LOG)); echo "notebooks: executed beside pytest, progress in $(NBS_LOG)"
	@$(RUN_NBS) > $(NBS_LOG) 2>&1 & notebooks=$$!; \
	$(MAKE) --no-print-directory test-py; tests=$$?; \
	wait $$notebooks; ran=$$?; \
	if [ $$ran -eq 0 ]; then tail -n 1 $(NBS_LOG); else cat $(NBS_LOG); fi; \
	[ $$tests -eq 0 ] && [ $$ran -eq 0 ]

test-nbs: install  ## every notebook executed on its defaults in a kernel, as nbdev_test would; the docs site reuses them
	$(RUN_NBS)

test-py: install  ## pytest, N_WORKERS processes, each test module whole in one (its module fixtures built once)
	$(BIN)/pytest -q -p no:cacheprovider -n $(N_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

lab: install  ## JupyterLab on nbs/ (127.0.0.1, root or not) with the project's kernel; saved notebooks stay clean
	$(BIN)/jupyter lab --config=tools/jupyter_server_config.py

docs-install: install  ## the `docs` extra (Jupyter Book 1), once
	$(BIN)/python -c "import jupyter_book, jupyter_server_mathjax" 2>/dev/null || $(PIP_INSTALL) -e ".[docs]"

docs: docs-install  ## the notebooks, executed on their defaults, as a static site in _docs/_build/html
	$(BIN)/python docs/build.py

readme-tables: install  ## rewrite README's measured tables from benchmarks/results/*.json
	$(BIN)/python benchmarks/readme_tables.py

export: install  ## regenerate macd_nb/ from nbs/
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

check-sync: install  ## the library and notebooks agree, notebooks are clean
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && git diff --exit-code -- nbs macd_nb
