"""Fitting the classifier with a held-out evaluation on every run.

Identical (text, label) pairs are kept once — production logs repeat prompts, and a repeated
prompt in both halves would grade memory instead of the model. The held-out split is by GROUP, so
near-duplicates never straddle it: a request's group is its conversation (when the caller passes
one), else its system prompt, else its template (the user message with digits folded, its first
60 and last 30 characters). Each task type gives about ``test_size`` of its groups to the held-out
set (seeded); a type with fewer than ``min_eval_examples`` distinct texts or only one group is
trained on but reported as not evaluated, never silently dropped.

Every figure names its label source (``label_source``): against human labels it is macro-F1;
against the relay annotator or the rules it is agreement with them, and is named so. Probabilities
are calibrated by temperature scaling on the held-out rows (``calibration.py``), and the threshold
that reaches ``target_accuracy`` on them is suggested for the model card. The figures are those of
the model fitted without the held-out rows; the exported model is then refitted on every row
(``ModelParams.refit``), with the same temperature.

Two augmentations of the TRAINING half (the held-out half is never touched) make the model lean on
what carries across sources instead of one source's habits: every request with a system prompt is
also shown without it (a feature's system prompt otherwise decides alone), and every lexicon entry
is shown once as a one-line request labeled with its family (for task types that have labels).

The lexicon is a prior (its examples, and its keyword markers weighed 3): it carries a model to
sources its labels never came from, and costs it on its own source (README, "The classifier on
public labeled requests"). With ``lexicon_prior='auto'`` the training half decides: both models
are fitted on folds of it, and the prior is left out only when that validates better by more
than one standard error (``classifiers/prior.py``). The folds hold out whole log files when the
labels come from two or more (``domains``), so the prior is judged on traffic the model has not
seen; else whole groups, stratified by task type as the held-out split is.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers.calibration import (
    TARGET_ACCURACY,
    crossfit_ece,
    fit_temperature,
    pick_threshold,
    selective_curve,
    softmax,
)
from classifiers.errors import TaxonomyError, TrainingError
from classifiers.evaluation import Evaluation, evaluate
from classifiers.features import (
    Lexicon,
    default_lexicon,
    normalize,
    request_text,
    split_messages,
    text_of,
)
from classifiers.model import ModelParams, build_pipeline
from classifiers.prior import PRIOR_CHOICES, PRIOR_MIN_TEXTS, PriorChoice, choose_prior
from classifiers.taxonomy import Taxonomy

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from classifiers.encoder import EmbeddingCache, SentenceEncoder


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
    label_source: str = "human"
    split: dict[str, Any] = field(default_factory=dict)  # how the held-out set was drawn
    temperature: float = 1.0
    suggested_threshold: float | None = None  # reaches target_accuracy on held-out rows
    encoder: SentenceEncoder | None = field(repr=False, default=None)
    prior: PriorChoice | None = None  # whether the lexicon prior was used, and why


Messages = Sequence[Mapping[str, Any]]
# The confidence threshold of a classifier trained on rule labels only. On public labeled English
# requests (README, "The classifier on public labeled requests") it keeps about half the
# requests, at 0.71 accuracy, where 0.3 kept 94% at 0.59.
RULES_THRESHOLD = 0.9


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


_DIGITS = re.compile(r"\d+")


def request_group(messages: Messages, given: str | None = None) -> str:
    """What keeps near-duplicates together in the split: the conversation (``given``), else the
    system prompt, else the user message's template (digits folded, first 60 + last 30 chars)."""
    if given:
        return "conv:" + str(given)
    system, user, _, _ = split_messages(messages)
    if system.strip():
        key = "sys:" + normalize(system)[:2000]
    else:
        text = _DIGITS.sub("0", normalize(user))
        key = "tpl:" + text[:60] + "|" + text[-30:]
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]


def split_held_out(
    labels: Sequence[str],
    test_size: float,
    seed: int,
    min_eval_examples: int,
    groups: Sequence[str] | None = None,
) -> tuple[list[int], list[int], list[str]]:
    """(train indexes, test indexes, task types not evaluated), by group, stratified and seeded.

    A group goes wholly to one side; each task type sends about ``test_size`` of its rows to the
    held-out side in whole groups (its groups are those where it is the most common label)."""
    groups = list(groups) if groups is not None else [str(i) for i in range(len(labels))]
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_class: dict[str, list[str]] = {}
    for g, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_class.setdefault(majority, []).append(g)
    counts = Counter(labels)
    test_groups: set[str] = set()
    rare: list[str] = []
    for label in sorted(counts):
        own = sorted(by_class.get(label, []))
        if counts[label] < min_eval_examples or len(own) < 2:
            rare.append(label)
            continue
        own = [own[j] for j in rng.permutation(len(own))]
        want = max(1, round(sum(len(members[g]) for g in own) * test_size))
        taken = 0
        for g in own[:-1]:  # always leave at least one group to train on
            if taken >= want:
                break
            test_groups.add(g)
            taken += len(members[g])
    test = sorted(i for g in test_groups for i in members[g])
    held = set(test)
    train = [i for i in range(len(labels)) if i not in held]
    present = {labels[i] for i in test}
    rare = sorted(set(rare) | {label for label in counts if label not in present})
    return train, test, rare


def _logits(pipeline: Pipeline, texts: Sequence[str]) -> np.ndarray:
    z = np.asarray(pipeline.decision_function(texts), dtype=np.float64)
    return np.column_stack([np.zeros_like(z), z]) if z.ndim == 1 else z


def _fold_temperature(pipeline: Pipeline, temperature: float) -> None:
    """Divide the linear model's weights by T: predict_proba and the export give softmax(z/T)."""
    clf = pipeline.named_steps["clf"]
    clf.coef_ = clf.coef_ / temperature
    clf.intercept_ = clf.intercept_ / temperature


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
    groups: Sequence[str | None] | None = None,
    domains: Sequence[str | None] | None = None,
    label_source: str = "human",
    weights: Sequence[float] | None = None,
    encoder: SentenceEncoder | None = None,
    cache: EmbeddingCache | None = None,
    target_accuracy: float = TARGET_ACCURACY,
) -> TrainedClassifier:
    """Fit on ``requests`` (chat message lists) labeled with task type names and evaluate on a
    held-out share split by group (``groups``: a conversation id per request, or None).
    ``domains`` (the log file of each request, say) are what ``lexicon_prior='auto'`` validates
    across when there are two or more. ``label_source`` ('human', 'relay', 'rules' or 'mixed')
    names what the figures are measured against; ``weights`` (e.g. the rules' precision) weigh
    each label in the fit; ``encoder`` adds a sentence-encoder view. Raises
    :class:`TrainingError` when there is too little to do."""
    params = params or ModelParams()
    lexicon = lexicon or default_lexicon()
    if len(requests) != len(labels):
        raise TrainingError(f"{len(requests)} requests but {len(labels)} labels")
    outside = Counter(label for label in labels if label not in taxonomy.names)
    if outside:
        shown = ", ".join(f"{k!r} ({v})" for k, v in outside.most_common(5))
        raise TaxonomyError(taxonomy.source, f"labels outside the taxonomy: {shown}")
    started = time.perf_counter()
    if groups is not None and len(groups) != len(requests):
        raise TrainingError(f"{len(requests)} requests but {len(groups)} groups")
    if domains is not None and len(domains) != len(requests):
        raise TrainingError(f"{len(requests)} requests but {len(domains)} domains")
    if params.lexicon_prior not in PRIOR_CHOICES:
        raise TrainingError(
            f"lexicon_prior must be one of {', '.join(PRIOR_CHOICES)}; got {params.lexicon_prior!r}"
        )
    first: dict[tuple[str, str], int] = {}
    for i, (messages, label) in enumerate(zip(requests, labels, strict=True)):
        first.setdefault((request_text(messages, lexicon), label), i)
    pairs = sorted(first)
    x = [p[0] for p in pairs]
    y = [p[1] for p in pairs]
    row_groups = [
        request_group(requests[first[p]], groups[first[p]] if groups is not None else None)
        for p in pairs
    ]
    row_weights = [float(weights[first[p]]) if weights is not None else 1.0 for p in pairs]
    row_domains = [str(domains[first[p]]) for p in pairs] if domains is not None else None
    counts = Counter(y)
    if len(counts) < 2:
        have = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "no labeled requests"
        raise TrainingError(f"need labeled examples of at least 2 task types to train; have {have}")
    split_method = "grouped: conversation, else system prompt, else template"
    train_idx, test_idx, rare = split_held_out(y, test_size, seed, min_eval_examples, row_groups)
    if len(counts) - len(rare) < 2:
        # Every type is one template (or one system prompt): fall back to conversations only and
        # say so, rather than refuse to train.
        row_groups = [
            request_group([], groups[first[p]])
            if groups is not None and groups[first[p]]
            else f"text:{i}"
            for i, p in enumerate(pairs)
        ]
        split_method = "by request: too few templates or system prompts per type to group by them"
        train_idx, test_idx, rare = split_held_out(
            y, test_size, seed, min_eval_examples, row_groups
        )
    if len(counts) - len(rare) < 2:
        raise TrainingError(
            f"too few labeled examples to hold out an evaluation set: need {min_eval_examples} "
            f"distinct texts in at least 2 groups for at least 2 task types; have "
            + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        )
    notes = [] if split_method.startswith("grouped") else [f"held-out split {split_method}"]
    notes += [
        f"task type {label!r} has {counts[label]} distinct labeled texts in "
        f"{len({row_groups[i] for i in range(len(y)) if y[i] == label})} group(s): "
        "trained on, not evaluated"
        for label in rare
    ]

    def fit(rows: Sequence[int], exclude: set[str], prior: bool) -> tuple[Pipeline, int]:
        """A pipeline fitted on ``rows`` (+ augmentations whose text is not in ``exclude``),
        with the lexicon prior or without it."""
        fx = [x[i] for i in rows]
        fy = [y[i] for i in rows]
        fw = [row_weights[i] for i in rows]
        if params.augment:
            extra: set[tuple[str, str]] = set()
            for i in rows:
                text = without_system(requests[first[pairs[i]]], lexicon)
                if text is not None and (text, y[i]) not in first:
                    extra.add((text, y[i]))
            if prior:
                extra.update(lexicon_examples(lexicon, sorted(set(fy))))
            added = sorted(pair for pair in extra if pair[0] not in exclude)
            fx += [p[0] for p in added]
            fy += [p[1] for p in added]
            fw += [1.0] * len(added)
        from sklearn.exceptions import ConvergenceWarning  # loaded with the model

        built = params if prior else replace(params, keyword_weight=0.0)
        model = build_pipeline(built, len(fx), lexicon, encoder=encoder, cache=cache)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                model.fit(fx, fy, clf__sample_weight=np.asarray(fw))
            except ValueError as exc:
                raise TrainingError(f"training failed: {exc}") from exc
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            note = f"logistic regression stopped at max_iter={params.max_iter} before converging"
            if note not in notes:
                notes.append(note)
        return model, len(fx) - len(rows)

    def fit_predict(train: list[int], test: list[int], prior: bool) -> list[str]:
        model, _ = fit(train, {x[i] for i in test}, prior)
        return [str(p) for p in model.predict([x[i] for i in test])]

    if params.lexicon_prior != "auto":
        prior = PriorChoice(params.lexicon_prior == "on", f"set: {params.lexicon_prior}")
    elif label_source == "rules":
        # Validation folds of rule labels would grade agreement with the rules, which fire on
        # the lexicon's own words.
        prior = PriorChoice(True, "kept: rule labels cannot judge the lexicon")
    elif len(train_idx) < PRIOR_MIN_TEXTS:
        prior = PriorChoice(True, f"kept: fewer than {PRIOR_MIN_TEXTS} training texts")
    else:
        prior = choose_prior(train_idx, y, row_groups, row_domains, fit_predict, seed)
    pipeline, augmented = fit(train_idx, {x[i] for i in test_idx}, prior.use)
    test_texts = [x[i] for i in test_idx]
    classes = tuple(str(c) for c in pipeline.classes_)
    truth = [y[i] for i in test_idx]
    logits = _logits(pipeline, test_texts)
    index = {c: j for j, c in enumerate(classes)}
    known = np.array([t in index for t in truth], dtype=bool)
    truth_idx = np.array([index.get(t, 0) for t in truth], dtype=np.int64)
    temperature = 1.0
    ece_crossfit = None
    if params.calibrate and known.sum() >= 20:
        temperature = fit_temperature(logits[known], truth_idx[known])
        ece_crossfit = crossfit_ece(logits[known], truth_idx[known], seed)
        if label_source == "rules":
            # Rule labels cover only the obvious requests: calibrating to them would make the
            # model as sure of every request as of those. Soften, never sharpen.
            temperature = max(1.0, temperature)
        _fold_temperature(pipeline, temperature)
    proba = softmax(logits / temperature)
    predicted = [classes[j] for j in proba.argmax(axis=1)]
    confidence = proba.max(axis=1)
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)], dtype=float)
    curve = selective_curve(confidence, correct)
    suggested = pick_threshold(curve, target_accuracy)
    if label_source == "rules":
        # Agreement with the rules on the requests they label says nothing of the others: the
        # threshold is fixed high, so what the rules never see stays "uncertain".
        suggested = RULES_THRESHOLD
    evaluation = evaluate(
        truth,
        predicted,
        confidence,
        classes=taxonomy.names,
        not_evaluated=rare,
        label_source=label_source,
        extra={
            "temperature": round(temperature, 4),
            "ece_crossfit": ece_crossfit,
            "selective": [p.to_dict() for p in curve],
            "target_accuracy": target_accuracy,
            "suggested_threshold": suggested,
        },
    )
    if params.refit and test_idx:
        # The figures above are the held-out model's; the exported model learns from every row
        # (held-out ones too), with the temperature fitted above.
        pipeline, augmented = fit(sorted(train_idx + test_idx), set(), prior.use)
        if temperature != 1.0:
            _fold_temperature(pipeline, temperature)
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
        augmented_rows=augmented,
        test_texts=test_texts,
        warnings=notes,
        label_source=label_source,
        split={
            "method": split_method,
            "groups": len(set(row_groups)),
            "train_groups": len({row_groups[i] for i in train_idx}),
            "held_out_groups": len({row_groups[i] for i in test_idx}),
            "test_size": test_size,
            "seed": seed,
        },
        temperature=temperature,
        suggested_threshold=suggested,
        encoder=encoder,
        prior=prior,
    )
