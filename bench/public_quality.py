"""The classifier on public labeled request data (see README "Benchmarks" for sources): macro-F1
in-source (grouped 5-fold cross-validation) and cross-source, each next to a character TF-IDF +
logistic regression baseline trained on the same rows in the same run, with and without the
sentence encoder, with a paired bootstrap interval of each difference; what the rules alone give
a team with no labels; and the encoder's cost.

The data files are built by ``scripts/prepare_public_requests.py`` into ``bench/data/`` (or the
folder in ``PLANNER_BENCH_DATA``); without them this part prints why and returns nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from classifiers import (
    ModelParams,
    TaskClassifier,
    build_card,
    check_parity,
    default_lexicon,
    evaluate,
    export_onnx,
    load_taxonomy,
    request_text,
    rule_label,
    train_classifier,
)
from classifiers.encoder import DEFAULT_ENCODER_DIR, MemoryCache, SentenceEncoder, load_encoder
from classifiers.errors import ModelLoadError
from classifiers.rules import rule_weight

DATA = Path(os.environ.get("PLANNER_BENCH_DATA", Path(__file__).parent / "data"))
CROSS = ("arena_hard_v2", "instructwild", "instructlab")  # each held out in turn (English)

Row = dict[str, Any]


def load(name: str) -> list[Row]:
    path = DATA / name
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def flat(messages: list[dict[str, Any]]) -> str:
    """The messages' contents, one per line: what the baseline reads."""
    return "\n".join(str(m.get("content", "")) for m in messages)


def baseline_pipeline(requests: list[list[dict[str, Any]]], labels: list[str]) -> Any:
    """Character TF-IDF + logistic regression over the raw messages: the reference point."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pairs = sorted(set(zip([flat(m) for m in requests], labels, strict=True)))
    pipe = Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    analyzer="char",
                    ngram_range=(2, 4),
                    min_df=2,
                    max_features=40_000,
                    dtype=np.float32,
                ),
            ),
            ("clf", LogisticRegression(max_iter=300, class_weight="balanced")),
        ]
    )
    return pipe.fit([p[0] for p in pairs], [p[1] for p in pairs])


def baseline_fit(rows: list[Row]) -> Any:
    return baseline_pipeline([r["messages"] for r in rows], [r["task_type"] for r in rows])


FOLDS = 5


def fold_of(row: Row, folds: int = FOLDS, seed: int = 0) -> int:
    """The fold of ``row``'s group (one template, task file or seed question), by a seeded hash:
    a group is never on both sides of a split."""
    return int(hashlib.sha256(f"{seed}:{row['group']}".encode()).hexdigest()[:8], 16) % folds


def _f1(truth: list[str], pred: list[str]) -> float:
    return evaluate(truth, pred, np.ones(len(truth))).macro_f1


def paired_interval(
    sets: list[tuple[list[str], list[str], list[str]]], draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of macro-F1(ours) - macro-F1(baseline), averaged over
    ``sets`` of (truth, ours, baseline) predictions; each set's test requests are resampled (the
    same draw for both models). How far a difference on a few hundred requests can be trusted."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    arrays = [tuple(np.asarray(v) for v in one) for one in sets]
    diffs = []
    for _ in range(draws):
        total = 0.0
        for t, o, b in arrays:
            labels = sorted(set(t.tolist()))
            i = rng.integers(0, len(t), len(t))
            total += f1_score(t[i], o[i], labels=labels, average="macro", zero_division=0)
            total -= f1_score(t[i], b[i], labels=labels, average="macro", zero_division=0)
        diffs.append(total / len(arrays))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return round(float(low), 3), round(float(high), 3)


def _predictions(
    train: list[Row], test: list[Row], encoder: SentenceEncoder | None, cache: MemoryCache
) -> dict[str, list[str]]:
    """Predictions on ``test`` of the baseline and the project's classifier (n-grams; + encoder),
    each trained on ``train``, beside the truth."""
    taxonomy = load_taxonomy()
    out = {"truth": [r["task_type"] for r in test]}
    base = baseline_fit(train)
    out["baseline"] = [str(p) for p in base.predict([flat(r["messages"]) for r in test])]
    texts = [request_text(r["messages"]) for r in test]
    for name, enc in (("ngrams", None), ("encoder", encoder)):
        if name == "encoder" and encoder is None:
            continue
        trained = train_classifier(
            [r["messages"] for r in train],
            [r["task_type"] for r in train],
            taxonomy=taxonomy,
            groups=[r["group"] for r in train],
            domains=[r["source"] for r in train],  # each source is its own log file
            encoder=enc,
            cache=cache,
        )
        out[name] = [str(p) for p in trained.pipeline.predict(texts)]
    return out


def _figures(pred: dict[str, list[str]], train: int, test: int) -> dict[str, Any]:
    """Macro-F1 of each model and the interval of its difference from the baseline."""
    truth = pred["truth"]
    out: dict[str, Any] = {"train": train, "test": test, "_predictions": pred}
    for name in ("baseline", "ngrams", "encoder"):
        if name not in pred:
            continue
        out[name] = _f1(truth, pred[name])
        if name != "baseline":
            out[f"{name}_minus_baseline_95"] = paired_interval(
                [(truth, pred[name], pred["baseline"])]
            )
    return out


def compare(
    train: list[Row], test: list[Row], encoder: SentenceEncoder | None, cache: MemoryCache
) -> dict[str, Any]:
    """Macro-F1 on ``test`` of the project's classifier (n-grams; + encoder) and the baseline."""
    return _figures(_predictions(train, test, encoder, cache), len(train), len(test))


def cross_validate(
    rows: list[Row], encoder: SentenceEncoder | None, cache: MemoryCache, folds: int = FOLDS
) -> dict[str, Any]:
    """In-source figures by grouped k-fold cross-validation: every request is tested once, by
    models that never saw its group (a single 80/20 split tests a fifth of the rows, and on a
    few hundred rows its macro-F1 moves by several hundredths from one seed to the next)."""
    pooled: dict[str, list[str]] = {}
    trained_on = []
    for k in range(folds):
        train = [r for r in rows if fold_of(r, folds) != k]
        test = [r for r in rows if fold_of(r, folds) == k]
        trained_on.append(len(train))
        for name, values in _predictions(train, test, encoder, cache).items():
            pooled.setdefault(name, []).extend(values)
    return _figures(pooled, round(sum(trained_on) / folds), len(rows))


def _line(name: str, r: dict[str, Any]) -> str:
    def gap(key: str) -> str:
        low_high = r.get(f"{key}_minus_baseline_95")
        return f" (vs baseline {low_high[0]:+.3f}..{low_high[1]:+.3f})" if low_high else ""

    enc = f", + encoder {r['encoder']:.3f}{gap('encoder')}" if "encoder" in r else ""
    return (
        f"{name:34} n-grams {r['ngrams']:.3f}{gap('ngrams')}{enc}; baseline {r['baseline']:.3f} "
        f"(train {r['train']:,}, test {r['test']:,})"
    )


def rules_only(labeled: list[Row], mix: list[Row]) -> dict[str, Any]:
    """A team with no labels: the rules label what they are sure of, a classifier learns from
    that; its mix on labeled public data (true mix known) and on a real chat mix."""
    taxonomy = load_taxonomy()
    out: dict[str, Any] = {}
    matches = [rule_label(r["messages"]) for r in labeled]
    hit = [(r, m) for r, m in zip(labeled, matches, strict=True) if m is not None]
    right = Counter(m.task_type for r, m in hit if m.task_type == r["task_type"])
    fired = Counter(m.task_type for _, m in hit)
    out["rules_coverage"] = round(len(hit) / len(labeled), 4)
    out["rules_precision"] = {t: round(right[t] / n, 3) for t, n in sorted(fired.items())}
    out["rules_precision_all"] = round(sum(right.values()) / max(1, len(hit)), 4)
    trained = train_classifier(
        [r["messages"] for r, _ in hit],
        [m.task_type for _, m in hit],
        taxonomy=taxonomy,
        groups=[r["group"] for r, _ in hit],
        label_source="rules",
        weights=[rule_weight(m) for _, m in hit],
    )
    threshold = trained.suggested_threshold or 0.5
    out["threshold"] = threshold
    out["agreement_with_rules"] = trained.evaluation.macro_f1
    for name, rows in (("labeled", labeled), ("chat_mix", mix)):
        proba = trained.pipeline.predict_proba([request_text(r["messages"]) for r in rows])
        classes = [str(c) for c in trained.pipeline.classes_]
        pred = [classes[i] for i in proba.argmax(axis=1)]
        conf = proba.max(axis=1)
        shown = [p if c >= threshold else "uncertain" for p, c in zip(pred, conf, strict=True)]
        mix_share = {k: round(v / len(rows), 3) for k, v in Counter(shown).most_common()}
        out[name] = {
            "mix": mix_share,
            "code_share_argmax": round(pred.count("code") / len(pred), 3),
        }
        if name == "labeled":
            truth = [r["task_type"] for r in rows]
            true_mix = Counter(truth)
            sure = [(t, p) for t, p in zip(truth, shown, strict=True) if p != "uncertain"]
            out[name]["true_code_share"] = round(true_mix["code"] / len(rows), 3)
            out[name]["macro_f1_vs_truth"] = _f1(truth, pred)
            out[name]["accuracy_of_labeled"] = round(
                sum(t == p for t, p in sure) / max(1, len(sure)), 3
            )
            out[name]["tvd_argmax_vs_truth"] = round(
                0.5
                * sum(abs(Counter(pred)[k] - true_mix[k]) for k in set(pred) | set(truth))
                / len(rows),
                3,
            )
    return out


def encoder_cost(rows: list[Row], encoder: SentenceEncoder, cache: MemoryCache) -> dict[str, Any]:
    """Requests/s of an n-gram and an encoder classifier through ONNX (TaskClassifier, 2 threads)
    on the same 1,000 requests, and the exported files' sizes. Training reuses the run's
    embeddings (``cache``); what is timed, the exported graph, embeds every request itself."""
    taxonomy = load_taxonomy()
    sample = rows[:1000]
    texts = [request_text(r["messages"]) for r in sample]
    out: dict[str, Any] = {"requests": len(texts), "threads": 2}
    for name, enc in (("ngrams", None), ("encoder", encoder)):
        trained = train_classifier(
            [r["messages"] for r in rows],
            [r["task_type"] for r in rows],
            taxonomy=taxonomy,
            groups=[r["group"] for r in rows],
            encoder=enc,
            cache=cache,
            params=ModelParams(refit=False),
        )
        model = export_onnx(trained.pipeline)
        parity = check_parity(trained.pipeline, model, trained.test_texts[:200])
        card = build_card(trained, model, parity, taxonomy=taxonomy, lexicon=default_lexicon())
        clf = TaskClassifier(
            model, card, threads=2, tokenizer_json=encoder.tokenizer_json if enc else None
        )
        clf.predict_texts(texts[:50])
        started = time.perf_counter()
        clf.predict_texts(texts, batch_size=32)
        seconds = time.perf_counter() - started
        out[name] = {
            "requests_per_s": round(len(texts) / seconds, 1),
            "onnx_mb": round(len(model) / 1e6, 1),
            "parity_max_abs_diff": parity.max_abs_diff,
        }
    return out


def run() -> dict[str, Any]:
    try:
        rows = load("public_requests.jsonl.gz")
        mix = load("chat_mix.jsonl.gz")
    except FileNotFoundError as exc:
        print(
            f"public data: {exc.filename} missing: build it with scripts/prepare_public_requests.py"
        )
        return {}
    try:
        encoder: SentenceEncoder | None = load_encoder(
            os.environ.get("PLANNER_ENCODER_DIR") or DEFAULT_ENCODER_DIR
        )
    except ModelLoadError as exc:
        print(f"encoder: {exc}: the encoder rows are left out (make encoder builds it)")
        encoder = None
    if encoder is not None:
        print(
            f"encoder: {encoder.name} ({encoder.dimensions} dimensions, {encoder.folder}; "
            "another with PLANNER_ENCODER_DIR)",
            flush=True,
        )
    cache = MemoryCache()
    english = [r for r in rows if r["lang"] == "en"]
    chinese = [r for r in rows if r["source"] == "belle_eval"]
    out: dict[str, Any] = {"rows": len(rows), "sources": dict(Counter(r["source"] for r in rows))}
    out["encoder"] = encoder.name if encoder is not None else None
    out["in_source_english"] = cross_validate(english, encoder, cache)
    print(_line(f"in-source English ({FOLDS}-fold grouped)", out["in_source_english"]), flush=True)
    out["in_source_belle_zh"] = cross_validate(chinese, encoder, cache)
    print(
        _line(f"in-source BELLE zh ({FOLDS}-fold grouped)", out["in_source_belle_zh"]), flush=True
    )
    # Two more Chinese sources, not used to choose the lexicon's CJK entries (chosen on BELLE,
    # see README): real users' questions to ChatGLM, and MOSS's beta users' prompts.
    for source, name in (("alignbench", "AlignBench"), ("moss", "MOSS")):
        subset = [r for r in rows if r["source"] == source]
        if subset:
            out[f"in_source_{source}_zh"] = cross_validate(subset, encoder, cache)
            label = f"in-source {name} zh ({FOLDS}-fold grouped)"
            print(_line(label, out[f"in_source_{source}_zh"]), flush=True)
    cross: dict[str, Any] = {}
    for held in CROSS:
        cross[held] = compare(
            [r for r in english if r["source"] != held],
            [r for r in english if r["source"] == held],
            encoder,
            cache,
        )
        print(_line(f"cross-source -> {held}", cross[held]), flush=True)
    keys = ["ngrams", "baseline"] + (["encoder"] if encoder else [])
    cross["mean"] = {k: round(float(np.mean([cross[h][k] for h in CROSS])), 4) for k in keys}
    cross["mean"].update({"train": 0, "test": sum(cross[h]["test"] for h in CROSS)})
    for k in keys[:1] + keys[2:]:
        sets = [cross[h]["_predictions"] for h in CROSS]
        cross["mean"][f"{k}_minus_baseline_95"] = paired_interval(
            [(p["truth"], p[k], p["baseline"]) for p in sets]
        )
    print(_line("cross-source mean of 3", cross["mean"]))
    out["cross_source"] = cross
    out["cross_lingual_en_to_zh"] = compare(english, chinese, encoder, cache)
    print(_line("cross-lingual English -> BELLE zh", out["cross_lingual_en_to_zh"]), flush=True)
    r = rules_only(english, mix)
    out["rules_only"] = r
    print(
        f"rules alone: label {r['rules_coverage']:.1%} of labeled English requests at precision "
        f"{r['rules_precision_all']:.3f} ({r['rules_precision']}); classifier trained on them "
        f"(agreement with the rules {r['agreement_with_rules']:.3f}, threshold {r['threshold']})"
    )
    lab = r["labeled"]
    print(
        f"  on labeled English: macro-F1 vs truth {lab['macro_f1_vs_truth']:.3f}, accuracy of "
        f"what it labels {lab['accuracy_of_labeled']:.3f}, "
        f"code share {lab['code_share_argmax']:.3f} "
        f"(true {lab['true_code_share']:.3f}), mix TVD {lab['tvd_argmax_vs_truth']:.3f}; "
        f"shown mix {lab['mix']}"
    )
    print(
        f"  on the public chat mix ({len(mix)} real prompts): shown mix {r['chat_mix']['mix']}, "
        f"code share before the threshold {r['chat_mix']['code_share_argmax']:.3f}"
    )
    if encoder is not None:
        cost = encoder_cost(english, encoder, cache)
        out["encoder_cost"] = cost
        print(
            f"cost on 2 threads, {cost['requests']} requests: n-grams "
            f"{cost['ngrams']['requests_per_s']:,.0f} req/s ({cost['ngrams']['onnx_mb']} MB); "
            f"+ encoder {cost['encoder']['requests_per_s']:,.0f} req/s "
            f"({cost['encoder']['onnx_mb']} MB + tokenizer.json)"
        )
    return out


def public(value: Any) -> Any:
    """``value`` without the predictions kept for the intervals (too long to print)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if k != "_predictions"}
    return value


if __name__ == "__main__":
    print(json.dumps(public(run()), indent=2, default=str))
