# fisherkl: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench install clean browser docs

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is a CPU build from local disk here; an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,plot,compare,hf,docs,rl]"
	# peer libraries for the comparison tests and benchmarks: --no-deps, because their declared
	# dependencies would replace torch 2.13.0 by 2.14.1 + torchvision (none of them needs those)
	$(PIP) install --quiet --no-deps backpack-for-pytorch==1.7.1 nngeometry==0.4 curvlinops-for-pytorch==3.0.1 \
		einops==0.8.2 unfoldNd==0.2.3 einconv==0.1.0 opt-einsum==3.4.0 linear_operator==0.6.1 kronfluence==1.0.1
	# kronfluence (benchmarks) needs accelerate, whose own dependencies keep torch 2.13.0
	$(PIP) install --quiet "accelerate>=0.31"
	touch $(STAMP)

install: $(STAMP)

# the main job: every family checked end to end -> tables here, plots + one HTML page in fisherkl-report/
demo: $(STAMP)
	$(VENV)/bin/fisherkl report --network --out fisherkl-report

# the rendered documentation (MkDocs Material + mkdocstrings, from the docstrings) in build/site;
# warnings are errors (strict: true in mkdocs.yml); no network needed once installed
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: $(STAMP) browser docs
	$(PY) -m pytest -q

# headless Chromium for the report's browser test (Debian's package, installed when missing and
# possible; otherwise that one test is skipped with its reason)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "chromium not available: the report's browser test will be skipped"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/bench_families.py
	$(PY) benchmarks/bench_geometry.py
	$(PY) benchmarks/bench_nn.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
