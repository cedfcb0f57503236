"""The lexicon as a prior, kept or left out by validation on the training rows (``choose_prior``).

Simulated traffic where the truth is known: each task type has 100 cue words of its own (a long
tail: a few hundred labeled requests see each cue two or three times), and a lexicon built over
those cues, either right (cue -> its type) or wrong (cue -> another type). The rule is checked
against the truth: the model it keeps must be at least as good, on fresh requests from the
traffic it will serve, as the one it leaves out.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from classifiers import (
    CARD_FILE,
    Lexicon,
    ModelParams,
    TrainedClassifier,
    TrainingError,
    export_onnx,
    load_taxonomy,
    request_text,
    train_classifier,
)
from classifiers.export import check_parity
from classifiers.prior import PRIOR_MIN_TEXTS, validation_folds
from flows.cli import app
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

TAX = load_taxonomy()
TYPES = ("summarization", "rewrite", "classification")
Requests = list[list[dict[str, str]]]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3))


_RNG = random.Random(42)
CUES = {t: [_word(_RNG) + "x" for _ in range(100)] for t in TYPES}
FILLER = [_word(_RNG) for _ in range(300)]
# A word each log file's template puts in every request of a type ("ticket", "memo"...).
TEMPLATE = {t: _word(_RNG) + "q" for t in TYPES}


def _rotated(shift: int) -> dict[str, str]:
    return {TYPES[i]: TEMPLATE[TYPES[(i + shift) % 3]] for i in range(3)}


def traffic(
    n: int, seed: int, template: dict[str, str] | None = None, noise: float = 0.0
) -> tuple[Requests, list[str]]:
    """``n`` requests: one cue of the type, six filler words, the file's template word when
    given; a share ``noise`` of the labels replaced by a random type (labelers err)."""
    rng = random.Random(seed)
    requests: Requests = []
    labels = []
    for _ in range(n):
        label = rng.choice(TYPES)
        words = [rng.choice(CUES[label])] + [rng.choice(FILLER) for _ in range(6)]
        if template:
            words.append(template[label])
        rng.shuffle(words)
        if rng.random() < noise:
            label = rng.choice(TYPES)
        requests.append([{"role": "user", "content": " ".join(words)}])
        labels.append(label)
    return requests, labels


def lexicon(shift: int) -> Lexicon:
    """Each type's cues filed under the type ``shift`` places on (0: the right one)."""
    return Lexicon({TYPES[(i + shift) % 3]: CUES[t] for i, t in enumerate(TYPES)}, "sim")


def true_f1(
    trained: TrainedClassifier, lex: Lexicon, requests: Requests, labels: list[str]
) -> float:
    predicted = trained.pipeline.predict([request_text(r, lex) for r in requests])
    return float(f1_score(labels, predicted, average="macro"))


def fit(
    requests: Requests, labels: list[str], lex: Lexicon, prior: str, **kw: object
) -> TrainedClassifier:
    return train_classifier(
        requests, labels, taxonomy=TAX, lexicon=lex, params=ModelParams(lexicon_prior=prior), **kw
    )


def test_a_lexicon_that_contradicts_the_team_s_labels_is_left_out() -> None:
    """One log file, 300 labeled requests, a lexicon that files every cue under the wrong type:
    validation on the training rows leaves the prior out, and on fresh traffic that is the
    better model by a clear margin."""
    lex = lexicon(1)
    requests, labels = traffic(300, seed=0, noise=0.2)
    fresh, fresh_labels = traffic(3000, seed=1)
    auto = fit(requests, labels, lex, "auto")
    on = fit(requests, labels, lex, "on")
    assert auto.prior is not None and not auto.prior.use
    assert auto.prior.how.startswith("validated: 3 folds of whole groups")
    assert auto.prior.scores["off"] - auto.prior.scores["on"] > auto.prior.scores["se"] > 0
    assert true_f1(auto, lex, fresh, fresh_labels) >= true_f1(on, lex, fresh, fresh_labels) + 0.03


def test_labels_from_two_log_files_are_validated_across_the_files() -> None:
    """Two log files whose templates tie a word to a different type in each (as two teams'
    templates would), and a right lexicon: holding out a whole file shows the prior travels,
    so it is kept, and on a third file's traffic it is no worse than the model without it."""
    lex = lexicon(0)
    a, a_labels = traffic(150, seed=0, template=_rotated(0), noise=0.2)
    b, b_labels = traffic(150, seed=1, template=_rotated(1), noise=0.2)
    fresh, fresh_labels = traffic(3000, seed=2, template=_rotated(2))
    files = ["a.jsonl"] * len(a) + ["b.jsonl"] * len(b)
    auto = fit(a + b, a_labels + b_labels, lex, "auto", domains=files)
    off = fit(a + b, a_labels + b_labels, lex, "off", domains=files)
    assert auto.prior is not None and auto.prior.use
    assert auto.prior.how.startswith("validated: 2 folds of whole log files")
    assert auto.prior.scores["on"] - auto.prior.scores["off"] > auto.prior.scores["se"] > 0
    assert true_f1(auto, lex, fresh, fresh_labels) >= true_f1(off, lex, fresh, fresh_labels)


def test_the_prior_is_kept_without_enough_labels_to_judge_it_and_for_rule_labels() -> None:
    lex = lexicon(1)
    few, few_labels = traffic(150, seed=0)
    trained = fit(few, few_labels, lex, "auto")
    assert trained.prior is not None and trained.prior.use and not trained.prior.scores
    assert f"fewer than {PRIOR_MIN_TEXTS} training texts" in trained.prior.how
    many, labels = traffic(300, seed=0)
    trained = fit(many, labels, lex, "auto", label_source="rules")
    assert trained.prior is not None and trained.prior.use
    assert "rule labels" in trained.prior.how
    trained = fit(few, few_labels, lex, "off")
    assert trained.prior is not None and not trained.prior.use and trained.prior.how == "set: off"


def test_a_model_without_the_prior_exports_with_parity() -> None:
    requests, labels = traffic(120, seed=3)
    trained = fit(requests, labels, lexicon(0), "off")
    report = check_parity(trained.pipeline, export_onnx(trained.pipeline), trained.test_texts)
    assert report.labels_equal and report.max_abs_diff < 1e-4


def test_an_unknown_prior_setting_is_refused() -> None:
    requests, labels = traffic(30, seed=0)
    with pytest.raises(TrainingError, match="lexicon_prior must be one of auto, on, off"):
        fit(requests, labels, lexicon(0), "maybe")
    with pytest.raises(TrainingError, match="30 requests but 2 domains"):
        fit(requests, labels, lexicon(0), "auto", domains=["a", "b"])


def test_validation_folds_keep_groups_whole_and_every_type_in_every_fold() -> None:
    """A feature's system prompt is one group: folds of whole groups dealt without regard to
    the labels could hold out a task type whole, and grade both models on a type neither saw."""
    groups, labels = [], []
    for label, sizes in (("code", [50, 30, 10, 10]), ("rewrite", [40, 20, 20]), ("chatbot", [5])):
        for j, size in enumerate(sizes):
            groups += [f"{label}-{j}"] * size
            labels += [label] * size
    folds = validation_folds(groups, labels, 3)
    by_group: dict[str, set[int]] = {}
    for group, fold in zip(groups, folds, strict=True):
        by_group.setdefault(group, set()).add(fold)
    assert all(len(f) == 1 for f in by_group.values())
    for label in ("code", "rewrite"):  # the types with at least 3 groups
        assert {f for f, y in zip(folds, labels, strict=True) if y == label} == {0, 1, 2}
    assert {f for f, y in zip(folds, labels, strict=True) if y == "chatbot"} == {-1}
    by_file = validation_folds(groups, labels, 3, stratify=False)
    assert sorted(by_file.count(k) for k in range(3)) == [60, 60, 65]  # sizes only
    code = sorted(
        sum(1 for f, y in zip(folds, labels, strict=True) if y == "code" and f == k)
        for k in range(3)
    )
    assert code == [20, 30, 50]  # the largest group cannot be split; the rest even out


def test_classify_train_validates_across_the_warehouse_s_log_files(tmp_path: Path) -> None:
    """End to end: two ingested log files of labeled traffic, `classify train` holds out whole
    files to judge the prior (the shipped lexicon knows none of the cues: the figures are what
    they are), says what it chose and why, and the model card keeps it."""
    for name, seed, shift in (("a.jsonl", 0, 0), ("b.jsonl", 1, 1)):
        requests, labels = traffic(200, seed=seed, template=_rotated(shift))
        lines = [
            json.dumps(
                {
                    "id": f"{name}-{i}",
                    "timestamp": "2026-11-20T12:00:00Z",
                    "request": {"model": "gpt-4.1", "messages": messages},
                    "metadata": {"task_type": label},
                }
            )
            for i, (messages, label) in enumerate(zip(requests, labels, strict=True))
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    warehouse = tmp_path / "planner.duckdb"
    con = open_warehouse(warehouse)
    ingest_paths(con, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    con.close()
    result = CliRunner().invoke(
        app, ["classify", "train", "-w", str(warehouse), "--labels", "metadata", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    prior = json.loads(result.stdout)["lexicon_prior"]
    assert prior["how"].startswith("validated: 2 folds of whole log files")
    assert set(prior["scores"]) == {"on", "off", "se"}
    card = json.loads((tmp_path / "classifier" / CARD_FILE).read_text())
    assert card["training"]["lexicon_prior"] == prior
    assert card["training"]["params"]["lexicon_prior"] == "auto"
    result = CliRunner().invoke(
        app, ["classify", "train", "-w", str(warehouse), "--lexicon-prior", "off"]
    )
    assert result.exit_code == 0, result.stderr
    assert "Lexicon prior: off (set: off)" in result.stdout
