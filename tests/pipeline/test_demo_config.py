"""The demo's configuration: its local candidates (the committed tiny models and, once built,
SmolLM2-135M-Instruct INT4/INT8 from the real-model cache) each say what they are."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from demo.logs import Words, generate_records, task_examples
from pipeline.demo import demo_models, real_demo_models, write_demo_config
from planner.settings import load_settings
from tests.conftest import real_model


def test_real_demo_models_are_found_in_the_cache_or_reported_missing(tmp_path: Path) -> None:
    present, missing = real_demo_models(tmp_path)
    assert present == [] and missing == [
        tmp_path / "smollm2-135m-instruct/int4",
        tmp_path / "smollm2-135m-instruct/int8",
    ]
    shutil.copytree(
        real_model("smollm2-135m-instruct", "int4"), tmp_path / "smollm2-135m-instruct/int4"
    )
    present, missing = real_demo_models(tmp_path)
    assert present == [tmp_path / "smollm2-135m-instruct/int4"]
    assert missing == [tmp_path / "smollm2-135m-instruct/int8"]


def test_every_candidate_of_the_demo_says_what_it_is(tmp_path: Path) -> None:
    smollm2 = [real_model("smollm2-135m-instruct", p) for p in ("int4", "int8")]
    local = [m for m in demo_models() if m.name == "int4"] + smollm2
    config = write_demo_config(tmp_path, local, "http://127.0.0.1:9/v1", "relay-demo")
    settings = load_settings(config)
    described = {c.name: c.description or "" for c in settings.candidates}
    assert set(described) == {
        "edge-small-int4",
        "edge-base-int4",
        "smollm2-135m-instruct-int4",
        "smollm2-135m-instruct-int8",
        "relay-demo",
    }
    for name in ("edge-small-int4", "edge-base-int4"):
        assert "part of the team's traffic" in described[name]
        assert "slots" in described[name] and "never saw" in described[name]
    assert "(classification, extraction, rewrite, closed qa)" in described["edge-small-int4"]
    for name in ("smollm2-135m-instruct-int4", "smollm2-135m-instruct-int8"):
        assert "SmolLM2-135M-Instruct" in described[name]
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in described[name]
        assert "never trained on this traffic" in described[name]
    assert "127.0.0.1" in described["relay-demo"]


def _values(words: Words) -> set[str]:
    out: set[str] = set()
    for value in vars(words).values():
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            out.update([item] if isinstance(item, str) else map(str, item))
    return out


def test_the_demo_logs_use_no_slot_the_models_trained_on() -> None:
    train, evaluation = Words.part("train"), Words.part("eval")
    assert not _values(train) & _values(evaluation) - {"billing", "technical", "account"}
    logged = " ".join(
        str(m["content"]) for r in generate_records(600, 0) for m in r["request"]["messages"]
    )
    trained = " ".join(
        m["content"]
        for t in ("extraction", "closed_qa")
        for ms, _ in task_examples(t, 300)
        for m in ms
    )
    for company in train.company:  # every training company is in training, none in the logs
        assert company in trained and company not in logged
    for company in evaluation.company:
        assert company in logged and company not in trained
    with pytest.raises(ValueError, match="unknown vocabulary part"):
        Words.part("test")
