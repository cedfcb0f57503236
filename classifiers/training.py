"""Fitting the classifier with a held-out evaluation on every run.

Identical (text, label) pairs are kept once — production logs repeat prompts, and a repeated
prompt in both halves would grade memory instead of the model. Each task type is split on its own
(seeded): types with at least ``min_eval_examples`` distinct texts give a share to the held-out
set; rarer types are trained on but reported as not evaluated, never silently dropped.

Two augmentations of the TRAINING half (the held-out half is never touched) make the model lean on
what carries across sources instead of one source's habits: every request with a system prompt is
also shown without it (a feature's system prompt otherwise decides alone), and every lexicon entry
is shown once as a one-line request labeled with its family (for task types that have labels).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers.errors import TaxonomyError, TrainingError
from classifiers.evaluation import Evaluation, evaluate
from classifiers.features import Lexicon, default_lexicon, request_text, split_messages, text_of
from classifiers.model import ModelParams, build_pipeline
from classifiers.taxonomy import Taxonomy

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@dataclass
class TrainedClassifier:
    pipeline: Pipeline
    classes: tuple[str, ...]
    params: ModelParams
    evaluation: Evaluation
    rows: int  # labeled rows handed in
    unique_texts: int  # distinct (text, label) pairs
    train_rows: int
    test_rows: int
    class_counts: dict[str, int]  # distinct pairs per task type
    seconds: float
    augmented_rows: int = 0  # training rows added by the augmentations
    test_texts: list[str] = field(repr=False, default_factory=list)
    warnings: list[str] = field(default_factory=list)


Messages = Sequence[Mapping[str, Any]]


def without_system(messages: Messages, lexicon: Lexicon) -> str | None:
    """``request_text`` of the request with its system prompt left out (None if it has none)."""
    system, user, users, history = split_messages(messages)
    if not system.strip():
        return None
    return text_of("", user, users, history, lexicon)


def lexicon_examples(lexicon: Lexicon, task_types: Sequence[str]) -> list[tuple[str, str]]:
    """One (request_text, family) per lexicon entry, for the families in ``task_types``."""
    out: list[tuple[str, str]] = []
    for family in lexicon.families:
        if family not in task_types:
            continue
        for entry in lexicon.entries(family):
            out.append((request_text([{"role": "user", "content": entry}], lexicon), family))
    return out


def split_held_out(
    labels: Sequence[str], test_size: float, seed: int, min_eval_examples: int
) -> tuple[list[int], list[int], list[str]]:
    """(train indexes, test indexes, task types too rare to evaluate), stratified and seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train: list[int] = []
    test: list[int] = []
    rare: list[str] = []
    for label in sorted(by_class):
        idx = np.array(by_class[label])
        if len(idx) < min_eval_examples:
            train.extend(idx.tolist())
            rare.append(label)
            continue
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) * test_size))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return sorted(train), sorted(test), rare


def train_classifier(
    requests: Sequence[Messages],
    labels: Sequence[str],
    *,
    taxonomy: Taxonomy,
    params: ModelParams | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    min_eval_examples: int = 5,
    lexicon: Lexicon | None = None,
) -> TrainedClassifier:
    """Fit on ``requests`` (chat message lists) labeled with task type names and evaluate on a
    held-out share. Raises :class:`TrainingError` when there is too little to do either."""
    params = params or ModelParams()
    lexicon = lexicon or default_lexicon()
    if len(requests) != len(labels):
        raise TrainingError(f"{len(requests)} requests but {len(labels)} labels")
    outside = Counter(label for label in labels if label not in taxonomy.names)
    if outside:
        shown = ", ".join(f"{k!r} ({v})" for k, v in outside.most_common(5))
        raise TaxonomyError(taxonomy.source, f"labels outside the taxonomy: {shown}")
    started = time.perf_counter()
    first: dict[tuple[str, str], int] = {}
    for i, (messages, label) in enumerate(zip(requests, labels, strict=True)):
        first.setdefault((request_text(messages, lexicon), label), i)
    pairs = sorted(first)
    x = [p[0] for p in pairs]
    y = [p[1] for p in pairs]
    counts = Counter(y)
    if len(counts) < 2:
        have = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "no labeled requests"
        raise TrainingError(f"need labeled examples of at least 2 task types to train; have {have}")
    train_idx, test_idx, rare = split_held_out(y, test_size, seed, min_eval_examples)
    if len(counts) - len(rare) < 2:
        raise TrainingError(
            f"too few labeled examples to hold out an evaluation set: need {min_eval_examples} "
            f"distinct texts for at least 2 task types; have "
            + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        )
    notes = [
        f"task type {label!r} has {counts[label]} distinct labeled texts (< {min_eval_examples}): "
        "trained on, not evaluated"
        for label in rare
    ]
    train_x = [x[i] for i in train_idx]
    train_y = [y[i] for i in train_idx]
    if params.augment:
        extra: set[tuple[str, str]] = set()
        for i in train_idx:
            text = without_system(requests[first[pairs[i]]], lexicon)
            if text is not None and (text, y[i]) not in first:
                extra.add((text, y[i]))
        extra.update(lexicon_examples(lexicon, sorted(set(train_y))))
        held_out = {x[i] for i in test_idx}
        added = sorted(pair for pair in extra if pair[0] not in held_out)
        train_x += [p[0] for p in added]
        train_y += [p[1] for p in added]
    from sklearn.exceptions import ConvergenceWarning  # loaded with the model (build_pipeline)

    pipeline = build_pipeline(params, len(train_x), lexicon)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            pipeline.fit(train_x, train_y)
        except ValueError as exc:
            raise TrainingError(f"training failed: {exc}") from exc
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"logistic regression stopped at max_iter={params.max_iter} before converging")
    test_texts = [x[i] for i in test_idx]
    proba = pipeline.predict_proba(test_texts)
    classes = tuple(str(c) for c in pipeline.classes_)
    predicted = [classes[j] for j in proba.argmax(axis=1)]
    evaluation = evaluate(
        [y[i] for i in test_idx],
        predicted,
        proba.max(axis=1),
        classes=taxonomy.names,
        not_evaluated=rare,
    )
    return TrainedClassifier(
        pipeline=pipeline,
        classes=classes,
        params=params,
        evaluation=evaluation,
        rows=len(requests),
        unique_texts=len(pairs),
        train_rows=len(train_idx),
        test_rows=len(test_idx),
        class_counts=dict(sorted(counts.items())),
        seconds=round(time.perf_counter() - started, 3),
        augmented_rows=len(train_x) - len(train_idx),
        test_texts=test_texts,
        warnings=notes,
    )
