"""Grouped held-out split, figures named by label source, calibration and selective accuracy,
abstaining rules and their weights, the annotator's examples and agreement."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import (
    agreement,
    builtin_examples,
    few_shot_examples,
    figure_name,
    fit_temperature,
    label_source_of,
    labeling_messages,
    load_taxonomy,
    pick_threshold,
    request_group,
    request_text,
    rule_label,
    rule_precision,
    rule_weight,
    selective_curve,
    split_held_out,
    train_classifier,
)
from classifiers.calibration import crossfit_ece, expected_calibration_error, softmax
from classifiers.training import RULES_THRESHOLD
from demo.logs import generate_records, true_task_type

TAX = load_taxonomy()


def test_near_duplicates_of_one_template_or_system_prompt_never_straddle_the_split() -> None:
    requests, labels = [], []
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
    ]
    for t in range(30):  # 30 templates, 8 near-duplicates each (only a number changes)
        task = ("rewrite", "code", "summarization")[t % 3]
        name = f"{words[t % 10]} {words[t // 10]}"
        for k in range(8):
            requests.append([{"role": "user", "content": f"Please {name} this, item number {k}"}])
            labels.append(task)
    for s in range(12):  # 12 features with a system prompt each
        for k in range(6):
            requests.append(
                [
                    {"role": "system", "content": f"You are feature {s}. Classify the input."},
                    {"role": "user", "content": f"{words[k]} user text {words[s % 10]} here"},
                ]
            )
            labels.append("classification")
    groups = [request_group(m) for m in requests]
    assert len(set(groups)) == 42
    train, test, rare = split_held_out(labels, 0.25, 0, 5, groups)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(labels)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in test})
    assert not rare and {labels[i] for i in test} == set(labels)
    for task in set(labels):
        share = sum(labels[i] == task for i in test) / labels.count(task)
        assert 0.1 <= share <= 0.45  # about test_size of each type, in whole groups
    # A conversation id groups requests that look nothing alike.
    assert request_group([], "c-1") == request_group([{"role": "user", "content": "x"}], "c-1")


def test_the_trained_classifier_names_its_label_source_and_suggests_a_threshold() -> None:
    recs = generate_records(900, 4)
    requests = [r["request"]["messages"] for r in recs]
    labels = [true_task_type(r) for r in recs]
    trained = train_classifier(requests, labels, taxonomy=TAX, label_source="relay")
    ev = trained.evaluation.to_dict()
    assert ev["label_source"] == "relay"
    assert ev["figure"] == "agreement with the relay annotator (macro-F1)"
    from_rules = train_classifier(requests, labels, taxonomy=TAX, label_source="rules")
    assert from_rules.evaluation.figure == "agreement with the rules (macro-F1)"
    assert from_rules.suggested_threshold == RULES_THRESHOLD  # never from the rules' own rows
    assert from_rules.temperature >= 1.0  # calibrating to the rules never sharpens
    assert trained.split["held_out_groups"] >= 2 and trained.split["train_groups"] >= 2
    curve = ev["selective"]
    assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
    covers = [p["coverage"] for p in curve]
    assert covers == sorted(covers, reverse=True) and covers[0] <= 1.0
    t = ev["suggested_threshold"]
    if t is not None:
        point = next(p for p in curve if p["threshold"] == t)
        assert point["accuracy"] >= ev["target_accuracy"]
    assert ev["temperature"] > 0
    assert figure_name("human") == "macro-F1 against human labels"
    assert label_source_of({"metadata": 5, "relay": 0, "rules": 0}) == "human"
    assert label_source_of({"metadata": 5, "relay": 3, "rules": 0}) == "mixed"
    assert label_source_of({"metadata": 0, "relay": 0, "rules": 9}) == "rules"


def test_temperature_scaling_recovers_a_known_overconfidence() -> None:
    rng = np.random.default_rng(7)
    true_logits = rng.normal(0, 1.5, size=(6000, 5))
    p = softmax(true_logits)
    truth = np.array([rng.choice(5, p=row) for row in p])
    shown = true_logits * 3.0  # a model three times too sure of itself
    t = fit_temperature(shown, truth)
    assert 2.6 < t < 3.4
    before = expected_calibration_error(
        softmax(shown).max(axis=1), (shown.argmax(1) == truth) * 1.0
    )
    after = crossfit_ece(shown, truth)
    assert after is not None and after < before / 3 and after < 0.03


def test_selective_accuracy_and_the_threshold_for_a_target_where_the_truth_is_known() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.2, 1.0, 20_000)
    correct = (rng.uniform(size=confidence.size) < confidence).astype(float)  # calibrated
    curve = selective_curve(confidence, correct)
    for point in curve:  # accuracy among kept = mean confidence among kept
        kept = confidence >= point.threshold
        assert point.coverage == pytest.approx(kept.mean())
        assert point.accuracy == pytest.approx(confidence[kept].mean(), abs=0.02)
    t = pick_threshold(curve, 0.9)
    # mean of U(t, 1) = (t + 1) / 2 >= 0.9  <=>  t >= 0.8
    assert t == pytest.approx(0.8, abs=0.051)
    assert pick_threshold(curve, 0.999) is None


def test_rules_abstain_on_code_rewrites_and_weigh_labels_by_their_precision() -> None:
    code_rewrite = [{"role": "user", "content": "Rewrite the following Python code as a loop:"}]
    translate_code = [{"role": "user", "content": "Translate this JavaScript function to Go"}]
    assert rule_label(code_rewrite) is None or rule_label(code_rewrite).task_type == "code"
    assert rule_label(translate_code) is None or rule_label(translate_code).task_type == "code"
    polite = rule_label([{"role": "user", "content": "Rewrite this note to sound friendlier: hi"}])
    assert polite is not None and polite.task_type == "rewrite"
    assert rule_label([{"role": "user", "content": "What is the area of a 6 cm circle?"}]) is None
    table = rule_precision()
    assert set(table) >= {"code_request", "fact_question", "rewrite"}
    assert all(0 < v < 1 for v in table.values())
    fact = rule_label([{"role": "user", "content": "Who was the first emperor of Rome?"}])
    assert fact is not None and rule_weight(fact) == table["fact_question"]


def test_annotator_prompt_has_definitions_and_examples_and_agreement_is_measured() -> None:
    shipped = builtin_examples(TAX)
    assert {task for _, task in shipped} == set(TAX.names)
    human = [
        ([{"role": "user", "content": f"Fix my SQL query number {i}"}], "code") for i in range(5)
    ]
    examples = few_shot_examples(human, TAX, per_type=2)
    assert sum(task == "code" for _, task in examples) == 2
    assert all("SQL" in text for text, task in examples if task == "code")
    assert {task for _, task in examples} == set(TAX.names)  # the rest from the shipped set
    system = labeling_messages([{"role": "user", "content": "hi"}], TAX, examples)[0]["content"]
    assert "- code: Write, explain" in system and "Examples:" in system
    assert "Fix my SQL query" in system
    annotator = {"a": "code", "b": "code", "c": "rewrite", "d": "open_qa", "x": "code"}
    humans = {"a": "code", "b": "rewrite", "c": "rewrite", "d": "open_qa", "y": "code"}
    out = agreement(annotator, humans)
    assert out["rows"] == 4 and out["accuracy"] == 0.75
    # kappa: p_o = .75, p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16
    assert out["cohen_kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16), abs=1e-4)
    assert out["per_type"]["rewrite"] == {"rows": 2, "agreement": 0.5}
    assert agreement({}, humans)["accuracy"] is None


def test_word_ngrams_survive_accents_and_cjk_in_the_words_view() -> None:
    recs = generate_records(400, 2)
    requests = [r["request"]["messages"] for r in recs]
    labels = [true_task_type(r) for r in recs]
    for k in range(12):
        requests.append([{"role": "user", "content": f"Résume ce café naïf numéro {k} à Genève"}])
        labels.append("summarization")
    trained = train_classifier(requests, labels, taxonomy=TAX)
    words = dict(trained.pipeline.named_steps["views"].transformer_list)["words"]
    assert "café naïf" in words.vocabulary_ and "résume" in words.vocabulary_
    text = request_text([{"role": "user", "content": "Résume ce café naïf à Genève"}])
    assert "café naïf" in words.build_analyzer()(text)
