"""The lexicon as a prior, kept or left out by validation on the training rows.

The lexicon's entries are training rows and its keyword markers weigh 3 (``ModelParams``): that
carries a model to sources its labels never came from, and costs it on its own source (README,
"The classifier on public labeled requests"). ``choose_prior`` fits a model with the prior and one
without on validation folds of the training half and keeps the prior unless leaving it out gains
more than one standard error; ``train_classifier`` calls it when ``lexicon_prior='auto'``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PriorChoice:
    """Whether the model uses the lexicon prior, how that was decided, and the macro-F1 (or
    agreement) of each choice on the validation folds when they were measured."""

    use: bool
    how: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"use": self.use, "how": self.how, "scores": dict(self.scores)}


PRIOR_CHOICES = ("auto", "on", "off")
# Below this many distinct training texts 'auto' keeps the prior: folds of fewer rows measure
# macro-F1 too roughly to decide on, and few labels are where a prior matters most.
PRIOR_MIN_TEXTS = 200
# 'auto' decides on at most this many (sampled) training texts, so that choosing costs a bounded
# few fits: with many more labels the data outweigh the lexicon's ~1,000 rows either way.
PRIOR_MAX_TEXTS = 3000
PRIOR_FOLDS = 3
# The prior is left out only when that gains more than one standard error of the gain (paired
# bootstrap of the validation rows, this many draws): the one-standard-error rule, with the
# prior as the default, so a coin toss never flips it.
PRIOR_BOOTSTRAP = 200


def validation_folds(
    groups: Sequence[str], labels: Sequence[str], folds: int, *, stratify: bool = True
) -> list[int]:
    """A fold per row (-1: trained on in every fold, never validated), whole groups to a fold.

    Stratified, as the held-out split is: each group belongs to its most common label, and each
    label deals its groups out largest first, each to the fold with the fewest of that label's
    rows so far (then the fewest rows, then the lowest number), so no fold holds out a task type
    whole (a feature's system prompt is one group). A type with fewer groups than ``folds`` is
    trained on, not validated, as the held-out split does with it. Not stratified (log files,
    which are what is held out): largest group first, each to the fold with the fewest rows."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_label: dict[str, list[str]] = {}
    for g, idx in members.items():
        key = Counter(labels[i] for i in idx).most_common(1)[0][0] if stratify else ""
        by_label.setdefault(key, []).append(g)
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for label in sorted(by_label):
        own = [0] * folds
        ordered = sorted(by_label[label], key=lambda g: (-len(members[g]), g))
        for g in ordered:
            if stratify and len(ordered) < folds:
                fold_of[g] = -1
                continue
            k = min(range(folds), key=lambda j: (own[j], load[j], j))
            fold_of[g] = k
            own[k] += len(members[g])
            load[k] += len(members[g])
    return [fold_of[g] for g in groups]


def choose_prior(
    rows: Sequence[int],
    labels: Sequence[str],
    groups: Sequence[str],
    domains: Sequence[str] | None,
    fit_predict: Callable[[list[int], list[int], bool], list[str]],
    seed: int = 0,
) -> PriorChoice:
    """Keep the lexicon prior or not, by macro-F1 on validation folds of the training ``rows``
    (indices into ``labels``/``groups``/``domains``). Folds hold out whole domains when the rows
    come from at least two, else whole groups. The prior is the default (the safer one for
    traffic the labels did not come from): it is left out only when that gains more pooled
    macro-F1 than one standard error of the gain (paired bootstrap), so a difference within the
    validation rows' noise does not flip it. ``fit_predict(train, test, use_prior)`` returns
    predictions for ``test``."""
    from sklearn.metrics import f1_score

    chosen = list(rows)
    if len(chosen) > PRIOR_MAX_TEXTS:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(chosen, PRIOR_MAX_TEXTS, replace=False).tolist())
    by_domain = domains is not None and len({domains[i] for i in chosen}) >= 2
    keys = [(domains if by_domain and domains is not None else groups)[i] for i in chosen]
    folds = min(PRIOR_FOLDS, len(set(keys)))
    if folds < 2:
        return PriorChoice(True, "kept: fewer than 2 groups to validate on")
    fold = validation_folds(keys, [labels[i] for i in chosen], folds, stratify=not by_domain)
    truth: list[str] = []
    predicted: dict[bool, list[str]] = {True: [], False: []}
    for k in range(folds):
        train = [i for i, f in zip(chosen, fold, strict=True) if f != k]
        test = [i for i, f in zip(chosen, fold, strict=True) if f == k]
        if not test:
            continue
        if len({labels[i] for i in train}) < 2:
            return PriorChoice(True, "kept: a validation fold would train on one task type")
        truth += [labels[i] for i in test]
        for use in (True, False):
            predicted[use] += fit_predict(train, test, use)
    if not truth:
        return PriorChoice(True, f"kept: no task type has {folds} groups to validate on")
    present = sorted(set(truth))
    on, off = (np.asarray(predicted[use]) for use in (True, False))
    gold = np.asarray(truth)

    def macro(pred: np.ndarray, rows: np.ndarray | slice = slice(None)) -> float:
        return float(
            f1_score(gold[rows], pred[rows], labels=present, average="macro", zero_division=0)
        )

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(gold), len(gold)) for _ in range(PRIOR_BOOTSTRAP)]
    with_prior, without = macro(on), macro(off)
    se = float(np.std([macro(off, i) - macro(on, i) for i in draws], ddof=1))
    scores = {"on": round(with_prior, 4), "off": round(without, 4), "se": round(se, 4)}
    unit = "log files" if by_domain else "groups"
    how = f"validated: {folds} folds of whole {unit} over {len(chosen)} training texts" + (
        f" (sampled from {len(rows)})" if len(chosen) < len(rows) else ""
    )
    if len(truth) < len(chosen):
        how += f", {len(truth)} of them validated (the others' types have too few {unit})"
    return PriorChoice(not without - with_prior > se, how, scores)
