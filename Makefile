# Everything from nothing: `make demo` and `make test` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel on this machine; set TORCH_SPEC=torch (or a CUDA build) elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install js browser demo test test-all lint clean llama-cpp

$(STAMP): pyproject.toml Makefile plugins/gpt2reg-alibi/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
# The example third-party plugin, installed as a user would; its tests run in `make test`.
	$(BIN)/pip install -q -e plugins/gpt2reg-alibi
# onnxruntime-genai, for the export folder's tests: its wheel requires the CPU `onnxruntime`, which would
# overwrite onnxruntime-gpu's files (the same module); either one provides the library it loads.
	$(BIN)/pip install -q --no-deps "onnxruntime-genai>=0.18,<0.19"
	touch $(STAMP)

install: $(STAMP) js browser

# transformers.js and onnxruntime-node for the export folder's tests and examples/ (npm's lockfile;
# ONNXRUNTIME_NODE_INSTALL=skip: its install script would download CUDA files). Without npm the
# JavaScript tests skip and say why.
NODE_DIR := examples/node
NODE_STAMP := $(NODE_DIR)/node_modules/.package-lock.json

js: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null; then cd $(NODE_DIR) && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the transformers.js and onnxruntime-node tests will skip"; fi

# Headless Chromium for the browser example's test, from Debian's packages where apt-get can install
# them (root); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get install -y -q chromium >/dev/null; } || echo "chromium not installed: the browser test will skip"

demo: install
	$(BIN)/gpt2reg components
	$(BIN)/gpt2reg build --pos rope -o models/gpt2-rope --force
	$(BIN)/gpt2reg generate models/gpt2-rope --prompt "Hello" --max-new-tokens 8 --seed 0
	$(BIN)/gpt2reg export models/gpt2-rope --no-validate
	$(BIN)/gpt2reg validate exports/gpt2-rope.onnx models/gpt2-rope --cases 4
	$(BIN)/gpt2reg generate --onnx exports/gpt2-rope.onnx --prompt "Hello" --max-new-tokens 8 --seed 0

TEST_PATHS := tests benchmarks/tests plugins/gpt2reg-alibi/tests

# The default tier: every component, every positional encoding with every quantization, pairs across kinds.
test: install
	$(BIN)/ruff check gpt2reg tests plugins benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow" $(TEST_PATHS)

# Everything, the slow tier included (124M checks, the full component product, subprocess benchmarks).
test-all: install
	$(BIN)/ruff check gpt2reg tests plugins benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist worksteal $(TEST_PATHS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# llama.cpp for the bench's comparison rows (not part of install/test/demo): the sources come from
# the llama-cpp-python sdist on PyPI, which vendors llama.cpp (pinned version and hash), built for this
# CPU only (native flags, Release). `gpt2reg bench --llama-cpp $(LLAMA_DIR)` then adds its rows.
LLAMA_CPP_PY ?= 0.3.36
LLAMA_CPP_SHA256 ?= 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_DIR ?= .llama.cpp
LLAMA_SDIST := $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PY).tar.gz
LLAMA_SRC := $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PY)/vendor/llama.cpp
LLAMA_TOOLS := llama-bench llama-quantize llama-simple

llama-cpp: $(LLAMA_DIR)/bin/llama-bench

$(LLAMA_SDIST):
	mkdir -p $(LLAMA_DIR)
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_DIR) "llama-cpp-python==$(LLAMA_CPP_PY)"
	echo "$(LLAMA_CPP_SHA256)  $@" | sha256sum -c --quiet

$(LLAMA_DIR)/bin/llama-bench: $(LLAMA_SDIST)
	tar -xzf $(LLAMA_SDIST) -C $(LLAMA_DIR)
	cmake -S $(LLAMA_SRC) -B $(LLAMA_DIR)/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF
	nice -n 19 cmake --build $(LLAMA_DIR)/build --config Release -j $$(nproc) --target $(LLAMA_TOOLS)
	mkdir -p $(LLAMA_DIR)/bin
	cp $(addprefix $(LLAMA_DIR)/build/bin/,$(LLAMA_TOOLS)) $(LLAMA_DIR)/bin/
	ln -sfn $(patsubst $(LLAMA_DIR)/%,%,$(LLAMA_SRC)) $(LLAMA_DIR)/src
	@echo "llama.cpp tools in $(LLAMA_DIR)/bin, converter in $(LLAMA_DIR)/src; then: $(BIN)/gpt2reg bench MODEL --llama-cpp $(LLAMA_DIR)"

clean:
	rm -rf $(VENV) models exports/*.onnx exports/*.onnx.data
