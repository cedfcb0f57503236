"""Tiny onnxruntime-genai models built once per test session (a fraction of a second each).

``tiny_model_dir`` is a random-weight (seeded) float32 decoder with the built-in byte-level BPE
tokenizer and a chat template; ``tiny_int8_dir`` / ``tiny_int4_dir`` are its quantized copies;
``eos_model_dir`` always answers the end-of-turn token at once (empty output). Tests must not
modify these folders: copy one to ``tmp_path`` first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planner.models.quantize import quantize_model_folder
from planner.models.tiny import TinySpec, build_tiny_model, random_weights, write_model_folder
from planner.models.tiny_tokenizer import END, builtin_tokenizer

TINY = {"layers": 2, "hidden": 64, "heads": 4, "context_length": 256, "seed": 0}


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models_root: Path) -> Path:
    return build_tiny_model(tiny_models_root / "tiny-fp32", **TINY)


@pytest.fixture(scope="session")
def tiny_int8_dir(tiny_model_dir: Path, tiny_models_root: Path) -> Path:
    return quantize_model_folder(tiny_model_dir, tiny_models_root / "tiny-int8", "int8")


@pytest.fixture(scope="session")
def tiny_int4_dir(tiny_model_dir: Path, tiny_models_root: Path) -> Path:
    return quantize_model_folder(tiny_model_dir, tiny_models_root / "tiny-int4", "int4")


@pytest.fixture(scope="session")
def eos_model_dir(tiny_models_root: Path) -> Path:
    """A model whose every next token is ``<|end|>``: the final norm's bias points at it."""
    tokenizer = builtin_tokenizer()
    spec = TinySpec(vocab_size=tokenizer.get_vocab_size(), hidden=32, layers=1, heads=2)
    weights = random_weights(spec, seed=1)
    end_id = tokenizer.token_to_id(END)
    weights["ln_f.weight"] = np.zeros(spec.hidden, dtype=np.float32)
    weights["ln_f.bias"] = np.ones(spec.hidden, dtype=np.float32)
    weights["lm_head"][:, end_id] = 10.0
    return write_model_folder(tiny_models_root / "eos", spec, weights, tokenizer)
