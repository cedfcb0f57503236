"""Predicting task types with a trained classifier: every request of the warehouse into
``predictions`` (through onnxruntime, as production would), one prompt from the command line,
the figures on a labeled file, and the plan page's classifier section.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from classifiers import (
    ClassifierError,
    RunDistribution,
    Taxonomy,
    compare_runs,
    evaluate,
    load_classifier,
    load_taxonomy,
    read_card,
)
from pipeline.stage import Progress, quiet
from planner.runs.folder import new_run_id
from warehouse.connection import fetch_one, open_warehouse
from warehouse.errors import EmptyWarehouseError
from warehouse.labels import (
    label_counts,
)
from warehouse.predictions import (
    PredictionWriter,
    count_requests,
    iter_request_messages,
    previous_run,
    run_distribution,
)

# --- prediction ----------------------------------------------------------------------------


def new_prediction_run_id() -> str:
    """A prediction run's id: ``pr-`` + the project's run-id format."""
    return "pr-" + new_run_id()


def predict_warehouse(
    con: duckdb.DuckDBPyConnection,
    model_dir: Path | str,
    *,
    threshold: float | None = None,
    batch_size: int = 20_000,
    threads: int | None = None,
    run_id: str | None = None,
    only_missing: bool = False,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Predict every request through ONNX into ``predictions`` (one run, one transaction) and
    compare the run with the previous one. ``only_missing``: just the requests this classifier
    has not predicted yet (a partial run: its mix is of those requests, and it has no drift)."""
    started = time.perf_counter()
    if count_requests(con) == 0:
        raise EmptyWarehouseError("requests")
    clf = load_classifier(model_dir, threads=threads)
    cut = clf.threshold if threshold is None else threshold
    run = run_id or new_prediction_run_id()
    at = datetime.now(UTC).replace(tzinfo=None)
    pending: Future[Any] | None = None
    pending_ids: list[str] = []
    with PredictionWriter(con, run, clf.version, at) as writer, ThreadPoolExecutor(1) as pool:
        # Texts of the next batch are built (Python) while onnxruntime runs this one (no GIL).
        missing = clf.version if only_missing else None
        for batch in iter_request_messages(con, batch_size, missing_version=missing):
            texts = [clf.text_json(m) for _, m in batch]
            if pending is not None:
                _write(writer, pending_ids, pending.result())
                progress(f"predict: {writer.rows} requests")
            pending_ids = [rid for rid, _ in batch]
            pending = pool.submit(clf.predict_texts, texts, threshold=cut)
        if pending is not None:
            _write(writer, pending_ids, pending.result())
    seconds = time.perf_counter() - started
    current = run_distribution(con, run)
    before = None if only_missing else previous_run(con, run)
    drift = (
        compare_runs(RunDistribution(**run_distribution(con, before)), RunDistribution(**current))
        if before
        else None
    )
    return {
        "run": run,
        "classifier_version": clf.version,
        "rows": writer.rows,
        "partial": only_missing,
        "confidence_threshold": cut,
        "uncertain": current["uncertain"],
        "task_mix": dict(sorted(current["mix"].items(), key=lambda kv: -kv[1])),
        "drift": drift,
        "seconds": round(seconds, 2),
        "rows_per_s": round(writer.rows / seconds) if seconds > 0 else None,
    }


def _write(writer: PredictionWriter, ids: Sequence[str], batch: Any) -> None:
    writer.write(ids, batch.task_types, batch.confidences.tolist(), batch.uncertain.tolist())


def predict_one(model_dir: Path | str, text: str) -> dict[str, Any]:
    """One prompt (as a single user message) -> task type, confidence, top probabilities."""
    clf = load_classifier(model_dir, threads=1)
    features = clf.text([{"role": "user", "content": text}])
    proba = clf.predict_proba([features])[0]
    order = proba.argsort()[::-1]
    best = clf.classes[int(order[0])]
    confidence = float(proba[order[0]])
    return {
        "task_type": best,
        "confidence": round(confidence, 4),
        "uncertain": confidence < clf.threshold,
        "top": {clf.classes[int(i)]: round(float(proba[i]), 4) for i in order[:3]},
        "classifier_version": clf.version,
    }


# --- evaluation on a labeled file ------------------------------------------------------------


def _labeled_line(raw: bytes, taxonomy: Taxonomy) -> tuple[list[dict[str, Any]], str] | str:
    """(messages, task type) of one chat-log line, or the reason it cannot be used."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not a JSON object"
    if not isinstance(record, dict):
        return "not a JSON object"
    request = record.get("request")
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        return "no request.messages"
    metadata = record.get("metadata")
    raw_label = metadata.get("task_type") if isinstance(metadata, dict) else None
    if raw_label is None:
        return "no metadata.task_type"
    task = taxonomy.normalize(raw_label)
    return (messages, task) if task is not None else "metadata.task_type outside the taxonomy"


def read_labeled_file(
    path: Path | str, taxonomy: Taxonomy
) -> tuple[list[list[dict[str, Any]]], list[str], dict[str, Any]]:
    """(messages, labels, skipped) from a chat-log JSONL whose lines carry metadata.task_type.
    Unusable lines are counted by reason (with the first line numbers), never guessed."""
    file = Path(path)
    if not file.is_file():
        raise ClassifierError(f"{file}: labeled file not found")
    requests: list[list[dict[str, Any]]] = []
    labels: list[str] = []
    reasons: dict[str, list[int]] = {}
    with file.open("rb") as handle:
        for n, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            line = _labeled_line(raw, taxonomy)
            if isinstance(line, str):
                reasons.setdefault(line, []).append(n)
                continue
            requests.append(line[0])
            labels.append(line[1])
    skipped = {r: {"lines": len(v), "first_lines": v[:5]} for r, v in reasons.items()}
    if not requests:
        detail = "; ".join(
            f"{r}: {v['lines']} (lines {v['first_lines']})" for r, v in skipped.items()
        )
        raise ClassifierError(
            f"{file}: no usable labeled lines" + (f" ({detail})" if detail else "")
        )
    return requests, labels, skipped


def evaluate_file(
    model_dir: Path | str, path: Path | str, taxonomy: Taxonomy | None = None
) -> dict[str, Any]:
    """The classifier's figures on a labeled chat-log file (through ONNX, like production)."""
    clf = load_classifier(model_dir)
    taxonomy = taxonomy or load_taxonomy()
    requests, labels, skipped = read_labeled_file(path, taxonomy)
    batch = clf.predict_texts([clf.text(m) for m in requests])
    ev = evaluate(labels, batch.task_types, batch.confidences, classes=clf.classes)
    unknown = sorted(set(labels) - set(clf.classes))
    return {
        **ev.to_dict(),
        "file": str(path),
        "skipped": skipped,
        "classes_unknown_to_model": unknown,
        "classifier_version": clf.version,
    }


# --- page data -------------------------------------------------------------------------------


def classifier_page_data(con: duckdb.DuckDBPyConnection, model_dir: Path | str) -> dict[str, Any]:
    """Plain data for the plan page: task mix of the latest run, label sources, held-out figures,
    drift against the run before."""
    card = read_card(model_dir)
    latest = con.execute(
        "SELECT prediction_run FROM predictions GROUP BY prediction_run "
        "ORDER BY max(predicted_at) DESC, prediction_run DESC LIMIT 1"
    ).fetchall()
    mix: dict[str, int] = {}
    drift = None
    uncertain = 0
    total = 0
    run = None
    if latest:
        run = str(latest[0][0])
        dist = run_distribution(con, run)
        mix, uncertain, total = dist["mix"], dist["uncertain"], dist["total"]
        before = previous_run(con, run)
        if before:
            drift = compare_runs(
                RunDistribution(**run_distribution(con, before)), RunDistribution(**dist)
            )
    ev = card.get("evaluation", {})
    return {
        "classifier_version": card.get("version"),
        "confidence_threshold": card.get("confidence_threshold"),
        "prediction_run": run,
        "task_mix": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
        "requests": total,
        "uncertain": uncertain,
        "uncertain_share": round(uncertain / total, 4) if total else 0.0,
        "label_sources": card.get("training", {}).get("label_sources", {}),
        "labels_in_warehouse": label_counts(con),
        "held_out": {
            "macro_f1": ev.get("macro_f1"),
            "accuracy": ev.get("accuracy"),
            "rows": ev.get("rows"),
            "ece": (ev.get("calibration") or {}).get("ece"),
            "per_class": ev.get("per_class", {}),
            "not_evaluated": ev.get("not_evaluated", []),
        },
        "drift": drift,
    }


def predict_with_model(
    warehouse: str,
    model_dir: str,
    threshold: float | None = None,
    only_missing: bool = False,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Every request (or those this classifier has not seen) into ``predictions``."""
    con = open_warehouse(warehouse)
    try:
        return predict_warehouse(
            con, model_dir, threshold=threshold, only_missing=only_missing, progress=progress
        )
    finally:
        con.close()


def page_data(warehouse: str, model_dir: str) -> dict[str, Any]:
    """The plan page's classifier figures, from a read-only warehouse."""
    con = open_warehouse(warehouse, read_only=True)
    try:
        return classifier_page_data(con, model_dir)
    finally:
        con.close()


def predictions_current(warehouse: str, version: str) -> bool:
    """Every request has a prediction by this classifier version."""
    con = open_warehouse(warehouse, read_only=True)
    try:
        row = fetch_one(
            con,
            "SELECT count(*) FROM requests AS r WHERE NOT EXISTS (SELECT 1 FROM predictions AS p "
            "WHERE p.request_id = r.request_id AND p.classifier_version = ?)",
            [version],
        )
        return row is not None and int(row[0]) == 0  # type: ignore[call-overload]
    finally:
        con.close()
