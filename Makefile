# Two commands for a newcomer: `make demo` and `make test` (each creates .venv and installs what it needs).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_NB ?= nbs/03_cpfs_train.ipynb
DEMO_ARGS ?= -p loss kta

.PHONY: demo test lab bench install references browser sync docs book dist-check

# OpenMP threads spin-wait after each parallel region (libgomp's default: 300,000 rounds). On a 2-core machine that
# is also doing something else, that spinning made the pre-image solver 3-4x slower; a short spin keeps the idle
# speed (bench/bench_preimage.py). Every command below, and the notebooks' kernels they start, inherit it.
export GOMP_SPINCOUNT ?= 1000

# The venv is rebuilt when the package definition changes.
$(VENV)/.installed: settings.ini setup.py pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

# VLFeat (Debian's libvlfeat-dev) and cyvlfeat are the references the feature tests compare against.
# They need root for apt; without them the reference tests skip with a reason
# (or fail when MOTION_NBS_REQUIRE_REFERENCES=1, as in CI).
references: $(VENV)/.installed
	@if $(PY) -c "import cyvlfeat.hog" 2>/dev/null; then echo "references: cyvlfeat present"; \
	elif [ "$$(id -u)" = "0" ]; then \
		( dpkg -s libvlfeat-dev >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvlfeat-dev >/dev/null; } ) && \
		$(PY) -m pip install --quiet --progress-bar off cython && \
		$(PY) -m pip install --quiet --progress-bar off --no-build-isolation cyvlfeat && \
		echo "references: installed VLFeat and cyvlfeat"; \
	else echo "references: not root, VLFeat reference tests will skip"; fi

# Debian's chromium and chromium-driver: tests/test_docs.py opens the built pages in them; and libjs-mathjax, which
# `make docs` copies into the preview so that its equations typeset offline. Same rules as the references:
# without them those tests skip, or fail when MOTION_NBS_REQUIRE_REFERENCES=1.
browser:
	@if dpkg -s chromium chromium-driver libjs-mathjax >/dev/null 2>&1; then echo "browser: chromium and MathJax present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver libjs-mathjax >/dev/null && \
		echo "browser: installed chromium, chromium-driver and libjs-mathjax"; \
	else echo "browser: not root (or no apt-get), the headless-browser docs tests will skip"; fi

demo: $(VENV)/.installed
	mkdir -p _runs
	MOTION_NBS_PROGRESS=text $(BIN)/papermill --log-output $(DEMO_NB) _runs/$(notdir $(DEMO_NB)) $(DEMO_ARGS)

# Repository checks first (package == export of the notebooks, notebooks clean, jupytext pairs, site
# config), then the notebooks' own tests, then pytest. Headless: nbdev_test draws with the inline
# backend of its own shell, and tests/conftest.py sets MPLBACKEND=Agg for pytest and the kernels it starts.
test: $(VENV)/.installed references browser
	$(BIN)/pytest -q tests/test_repo.py
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q --ignore=tests/test_repo.py tests

# What `pip install motion_nbs` gives a user (the GitHub workflow runs it after `make test`; tools/dist_check.sh says how): the wheel and
# the sdist from `python -m build`, each installed into a clean virtual environment with the core requirements only,
# the README's quickstart run there, and numba's cache checked in the installed package.
dist-check: $(VENV)/.installed
	PY=$(abspath $(PY)) tools/dist_check.sh

lab: $(VENV)/.installed
	$(BIN)/jupyter lab $$( [ "$$(id -u)" = "0" ] && echo --allow-root )

# The website in _docs/: with Quarto, nbdev_docs (what the deploy workflow runs); without it, a preview
# of the same pages and sidebar made with nbconvert (tools/build_preview.py). README.md is never rewritten.
docs: $(VENV)/.installed
	@if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else echo "docs: Quarto is not on the PATH; building a preview with nbconvert instead (tools/build_preview.py)"; \
		$(PY) tools/build_preview.py; fi

# Execute every chapter in order, in place, with its default parameters, and save it with its outputs and
# measured runtime (tools/book.py): what GitHub, JupyterLab and the website show. `make book NBS="03_cpfs_train"`
# runs only those. Training is cached in the runs folder, so a second run reuses it.
book: $(VENV)/.installed
	$(PY) tools/book.py $(NBS)

bench: $(VENV)/.installed
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Developer helpers: after editing a paired script or notebook, `make sync` updates its partner,
# exports the package and cleans the notebooks.
sync: $(VENV)/.installed
	$(PY) tools/sync_nbs.py
