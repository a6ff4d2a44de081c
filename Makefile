# The two commands a user needs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-all lint format bench bench-openclip clean

# torch first and pinned on CPU-only machines: the CPU build of 2.13.0 lies on these machines' disk, and an
# unpinned torch (asked for by us or by a dependency) would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=..." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet torch; \
	else $(PY) -m pip install --quiet torch==2.13.0; fi
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wit demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Hours on 2 cores; each writes benchmarks/results/<name>.json. The side-by-side ones with open_clip need its own
# venv (torch 2.14.1 + torchvision + open_clip_torch; see benchmarks/README.md): set OPENCLIP_PY.
BENCHES = fetch sources image_dedup near_dup_quality curate model loader curation_ablation distributed
OPENCLIP_PY ?= /work/openclip_venv/bin/python
bench: $(STAMP)
	for b in $(BENCHES); do $(PY) benchmarks/$$b.py || exit 1; done

bench-openclip: $(STAMP)
	$(OPENCLIP_PY) benchmarks/openclip_parity.py
	$(PY) benchmarks/tokenizer.py --openclip-python $(OPENCLIP_PY)
	$(PY) benchmarks/train.py --openclip-python $(OPENCLIP_PY)
	$(PY) benchmarks/encode.py --openclip-python $(OPENCLIP_PY)

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
