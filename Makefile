# Everything from nothing: `make demo` and `make test` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel on this machine; set TORCH_SPEC=torch (or a CUDA build) elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml Makefile plugins/gpt2reg-alibi/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
# The example third-party plugin, installed as a user would; its tests run in `make test`.
	$(BIN)/pip install -q -e plugins/gpt2reg-alibi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/gpt2reg components
	$(BIN)/gpt2reg build --pos rope -o models/gpt2-rope --force
	$(BIN)/gpt2reg generate models/gpt2-rope --prompt "Hello" --max-new-tokens 8 --seed 0
	$(BIN)/gpt2reg export models/gpt2-rope --no-validate
	$(BIN)/gpt2reg validate exports/gpt2-rope.onnx models/gpt2-rope --cases 4
	$(BIN)/gpt2reg generate --onnx exports/gpt2-rope.onnx --prompt "Hello" --max-new-tokens 8 --seed 0

test: install
	$(BIN)/ruff check gpt2reg tests plugins
	$(BIN)/python -m pytest -q -n 2 tests plugins/gpt2reg-alibi/tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) models exports/*.onnx exports/*.onnx.data
