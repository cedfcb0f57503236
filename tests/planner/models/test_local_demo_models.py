"""The committed demo models (models/edge-*): small, loadable without torch, good at exactly
what they were trained for, and measured (their card, the demo) on requests whose slots they never
saw: the vocabulary's ``eval`` part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.logs import TASK_TYPES, task_examples
from planner.models.folder import inspect_model
from planner.replay.local import LocalBackend
from planner.replay.protocol import ReplayRequest, ReplayResult

MODELS = Path(__file__).resolve().parents[3] / "models"
VARIANTS = [f"{m}/{v}" for m in ("edge-small", "edge-base") for v in ("fp32", "int8", "int4")]


def exact_matches(folder: Path, task: str, n: int = 6, seed: int = 505, part: str = "train") -> int:
    examples = task_examples(task, n, seed, part)
    results: list[ReplayResult] = []
    LocalBackend(folder.name, folder, max_new_tokens=128).replay(
        [ReplayRequest(f"{task}-{i}", m, 128) for i, (m, _) in enumerate(examples)],
        results.append,
    )
    return sum(
        (r.output_text or "").strip() == answer
        for r, (_, answer) in zip(results, examples, strict=True)
    )


def test_all_variants_are_committed_and_small() -> None:
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024
    quantization = {v: inspect_model(MODELS / v).quantization for v in VARIANTS}
    assert quantization["edge-small/fp32"] == "float32"
    assert quantization["edge-base/int8"] == "int8 (MatMulInteger, dynamic)"
    assert quantization["edge-base/int4"] == "int4 (MatMulNBits, block 32)"
    small, base = (inspect_model(MODELS / f"{m}/fp32") for m in ("edge-small", "edge-base"))
    assert small.parameters < base.parameters
    card = json.loads((MODELS / "edge-small/int4/planner_model.json").read_text())
    assert card["eval_exact_match"]["vocabulary_part"] == "eval"  # slots training never saw
    assert set(card["eval_exact_match"]["scores"]) == set(TASK_TYPES)


@pytest.mark.parametrize("variant", ["edge-small/int4", "edge-base/int4"])
def test_demo_models_solve_simple_tasks(variant: str) -> None:
    folder = MODELS / variant
    assert exact_matches(folder, "classification") == 6
    assert exact_matches(folder, "extraction") >= 5


def test_demo_models_fail_the_hard_ones() -> None:
    base = MODELS / "edge-base/int4"
    assert exact_matches(base, "code") == 0
    assert exact_matches(base, "reasoning", n=10) <= 4
    small = MODELS / "edge-small/int4"
    assert exact_matches(small, "summarization") == 0
    assert exact_matches(base, "summarization") >= 5  # the bigger one learned more types


def test_unseen_slots_are_harder_than_the_training_ones() -> None:
    """What the demo's plan measures: extraction of names, companies and cities the model never
    saw does not come out as well as of those it trained on."""
    folder = MODELS / "edge-base/int4"
    seen = exact_matches(folder, "extraction", n=10)
    unseen = exact_matches(folder, "extraction", n=10, part="eval")
    assert seen >= 8 and unseen < seen
