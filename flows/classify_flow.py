"""The task-type classifier as stages: label -> train -> export -> predict, plus the plan page's
figures. Plain functions take an open warehouse and plain values (the CLI calls them directly);
the Prefect flows below wrap them for the demo and the nightly run.

The relay annotator's completion function is built here, over httpx, from a relay candidate in
``planner.toml`` (``[classifier] annotator = "<candidate name>"``); its key is read from the
environment variable the candidate names at the moment the header is built, and is never a flow
parameter, a log line or a warehouse value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import duckdb
import httpx
from prefect import flow, task
from pydantic import SecretStr

from classifiers import (
    AnnotationReport,
    AnnotatorError,
    ClassifierError,
    LabelRecord,
    LabelResolution,
    ModelParams,
    RunDistribution,
    Taxonomy,
    TrainingError,
    annotate,
    build_card,
    check_parity,
    compare_runs,
    default_lexicon,
    evaluate,
    export_onnx,
    load_classifier,
    load_taxonomy,
    normalize_labels,
    read_card,
    request_text,
    request_text_json,
    resolve_labels,
    rule_label,
    save_classifier,
    train_classifier,
)
from planner.settings import PlannerSettings, load_settings
from warehouse.connection import open_warehouse
from warehouse.errors import EmptyWarehouseError
from warehouse.labels import (
    add_labels,
    iter_unlabeled_messages,
    label_counts,
    metadata_label_rows,
    read_labels,
    replace_labels,
    request_messages,
    unlabeled_for_annotation,
)
from warehouse.predictions import (
    PredictionWriter,
    count_requests,
    iter_request_messages,
    previous_run,
    run_distribution,
)

Progress = Callable[[str], None]
Complete = Callable[[list[dict[str, str]]], str]
MODEL_DIR_NAME = "classifier"


def default_model_dir(warehouse_path: Path | str) -> Path:
    """``classifier/`` beside the warehouse file (``./classifier`` for an in-memory warehouse)."""
    text = str(warehouse_path)
    return Path(MODEL_DIR_NAME) if text == ":memory:" else Path(text).parent / MODEL_DIR_NAME


def _quiet(_: str) -> None:
    return None


def _messages(messages_json: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(messages_json)
    except (json.JSONDecodeError, TypeError):
        return []
    return value if isinstance(value, list) else []


# --- the relay annotator -------------------------------------------------------------------


@dataclass(frozen=True)
class Annotator:
    """Where labels are asked for: an OpenAI-compatible endpoint (no key here, only its source)."""

    name: str  # recorded as labels.annotator: the model, so another model is asked afresh
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 30.0
    max_requests: int = 200


def annotator_from_settings(settings: PlannerSettings) -> Annotator | None:
    """The annotator ``[classifier] annotator`` names (a relay candidate), or None."""
    name = settings.classifier.annotator
    if not name:
        return None
    cand = settings.candidate(name)
    if cand.kind != "relay" or not cand.base_url or not cand.model:
        raise ClassifierError(f"classifier.annotator {name!r} must name a relay candidate")
    return Annotator(
        name=f"{cand.name}:{cand.model}",
        base_url=cand.base_url,
        model=cand.model,
        api_key_env=cand.api_key_env,
        timeout_s=min(cand.timeout_s, 60.0),
        max_requests=settings.classifier.annotate_max,
    )


def relay_completion(
    client: httpx.Client,
    base_url: str,
    model: str,
    *,
    api_key: SecretStr | None = None,
    timeout_s: float = 30.0,
) -> Complete:
    """A ``messages -> text`` function over ``{base_url}/chat/completions`` (no streaming, no
    retries: a failure is counted by the annotator and the request is asked again next run)."""
    url = base_url.rstrip("/") + "/chat/completions"

    def complete(messages: list[dict[str, str]]) -> str:
        headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 12}
        try:
            response = client.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise AnnotatorError("timeout", f"no answer within {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise AnnotatorError("transport", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise AnnotatorError("http", f"HTTP {response.status_code} from {url}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise AnnotatorError("http", "the response is not a chat completion") from exc
        return content if isinstance(content, str) else ""

    return complete


def annotate_unlabeled(
    con: duckdb.DuckDBPyConnection,
    taxonomy: Taxonomy,
    annotator: Annotator,
    complete: Complete,
    *,
    seed: int = 0,
) -> AnnotationReport:
    """Send up to ``annotator.max_requests`` unlabeled, never-asked prompts to the annotator;
    each answer (valid or not) is cached in ``labels`` as it arrives."""
    sample = unlabeled_for_annotation(con, annotator.name, annotator.max_requests, seed)

    def store(request_id: str, task_type: str | None, _answer: str) -> None:
        add_labels(con, "relay", [(request_id, task_type, annotator.name)])

    _, report = annotate(
        [(rid, _messages(m)) for rid, m in sample], complete, taxonomy, on_result=store
    )
    return report


# --- labels and training ---------------------------------------------------------------------


def refresh_rule_labels(con: duckdb.DuckDBPyConnection) -> int:
    """Run the rules over every request without a human label; replaces the 'rules' labels."""
    rows: list[tuple[str, str | None, str | None]] = []
    for batch in iter_unlabeled_messages(con):
        for request_id, messages_json in batch:
            match = rule_label(_messages(messages_json))
            if match is not None:
                rows.append((request_id, match.task_type, match.rule))
    return replace_labels(con, "rules", rows)


def collect_labels(
    con: duckdb.DuckDBPyConnection,
    taxonomy: Taxonomy,
    use: str = "all",
    *,
    annotator: Annotator | None = None,
    complete: Complete | None = None,
    seed: int = 0,
    progress: Progress = _quiet,
) -> tuple[LabelResolution, AnnotationReport | None, dict[str, int]]:
    """Refresh the labels of every source ``use`` needs; returns the resolution (one label per
    request, by precedence), the annotator's report, and the human labels outside the taxonomy."""
    if use not in ("metadata", "rules", "relay", "all"):
        raise ClassifierError(f"--labels must be metadata, rules, relay or all; got {use!r}")
    kept, outside = normalize_labels(metadata_label_rows(con), taxonomy)
    replace_labels(con, "metadata", [(rid, t, None) for rid, t in kept])
    if outside:
        shown = ", ".join(f"{k!r} ({v})" for k, v in outside.most_common(5))
        progress(
            f"labels: {sum(outside.values())} human labels outside the taxonomy dropped: {shown}"
        )
    report: AnnotationReport | None = None
    if use in ("relay", "all") and annotator is not None and complete is not None:
        report = annotate_unlabeled(con, taxonomy, annotator, complete, seed=seed)
        progress(report.message())
    counts = label_counts(con)
    if use == "rules" or (
        use == "all" and counts["metadata"]["labels"] + counts["relay"]["labels"] == 0
    ):
        written = refresh_rule_labels(con)
        progress(f"labels: rules labeled {written} obvious requests")
    records = [LabelRecord(*row) for row in read_labels(con)]
    return resolve_labels(records, taxonomy, use), report, dict(outside)


def train_from_warehouse(
    con: duckdb.DuckDBPyConnection,
    model_dir: Path | str,
    *,
    use: str = "all",
    taxonomy: Taxonomy | None = None,
    params: ModelParams | None = None,
    annotator: Annotator | None = None,
    complete: Complete | None = None,
    confidence_threshold: float = 0.5,
    seed: int = 0,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Labels -> train (held-out evaluation) -> ONNX export (parity-checked) -> model folder."""
    started = time.perf_counter()
    if count_requests(con) == 0:
        raise EmptyWarehouseError("requests")
    taxonomy = taxonomy or load_taxonomy()
    resolution, report, outside = collect_labels(
        con, taxonomy, use, annotator=annotator, complete=complete, seed=seed, progress=progress
    )
    if not resolution.labels:
        available = ", ".join(f"{k}: {v}" for k, v in resolution.available.items())
        raise TrainingError(
            f"no labels to train on with --labels {use} ({available}); log metadata.task_type, "
            "configure [classifier] annotator, or use --labels rules"
        )
    ids = sorted(resolution.labels)
    rows = request_messages(con, ids)
    requests = [_messages(m) for _, m in rows]
    labels = [resolution.labels[rid].task_type for rid, _ in rows]
    progress(f"train: {len(rows)} labeled requests ({_sources_line(resolution.by_source)})")
    trained = train_classifier(requests, labels, taxonomy=taxonomy, params=params, seed=seed)
    model = export_onnx(trained.pipeline, doc="Task-type classifier of llm-migration-planner")
    parity = check_parity(trained.pipeline, model, trained.test_texts)
    label_sources = dict(resolution.by_source)
    card = build_card(
        trained,
        model,
        parity,
        taxonomy=taxonomy,
        lexicon=default_lexicon(),
        label_sources=label_sources,
        confidence_threshold=confidence_threshold,
        extra={
            "labels": {
                "use": use,
                "sources_used": list(resolution.sources_used),
                "rules_bootstrap": resolution.rules_bootstrap,
                "available": resolution.available,
                "overridden": resolution.overridden,
                "disagreements": resolution.disagreements,
                "outside_taxonomy": {**outside, **resolution.outside_taxonomy},
                "annotator": report.to_dict() if report else None,
            }
        },
    )
    folder = save_classifier(model_dir, model, card)
    ev = trained.evaluation
    progress(f"train: held-out macro-F1 {ev.macro_f1:.3f} on {ev.rows} rows; model in {folder}")
    return {
        "model_dir": str(folder),
        "classifier_version": card["version"],
        "rows": trained.rows,
        "unique_texts": trained.unique_texts,
        "train_rows": trained.train_rows,
        "held_out_rows": trained.test_rows,
        "label_sources": label_sources,
        "labels_used": list(resolution.sources_used),
        "rules_bootstrap": resolution.rules_bootstrap,
        "outside_taxonomy": sum(outside.values()) + sum(resolution.outside_taxonomy.values()),
        "annotator": report.to_dict() if report else None,
        "macro_f1": ev.macro_f1,
        "accuracy": ev.accuracy,
        "ece": ev.calibration["ece"],
        "per_class": ev.per_class,
        "not_evaluated": ev.not_evaluated,
        "parity": parity.to_dict(),
        "warnings": trained.warnings,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _sources_line(by_source: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_source.items())


# --- prediction ----------------------------------------------------------------------------


def new_prediction_run_id() -> str:
    return "pr-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid4().hex[:6]


def predict_warehouse(
    con: duckdb.DuckDBPyConnection,
    model_dir: Path | str,
    *,
    threshold: float | None = None,
    batch_size: int = 20_000,
    threads: int | None = None,
    run_id: str | None = None,
    only_missing: bool = False,
    progress: Progress = _quiet,
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
            texts = [request_text_json(m) for _, m in batch]
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
    features = request_text([{"role": "user", "content": text}])
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
    batch = clf.predict_texts([request_text(m) for m in requests])
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


# --- Prefect ---------------------------------------------------------------------------------


def _annotator_and_client(config_path: str | None) -> tuple[Annotator | None, SecretStr | None]:
    settings = load_settings(config_path) if config_path else load_settings()
    annotator = annotator_from_settings(settings)
    if annotator is None:
        return None, None
    key = settings.candidate(settings.classifier.annotator or "").api_key()
    return annotator, key


@task(name="train-classifier")
def train_task(
    warehouse_path: str,
    model_dir: str,
    labels: str,
    config_path: str | None,
    taxonomy_path: str | None,
) -> dict[str, Any]:
    """Deterministic given the labels: no retries (the annotator counts its own failures)."""
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    annotator, key = _annotator_and_client(config_path)
    settings = load_settings(config_path) if config_path else load_settings()
    con = open_warehouse(warehouse_path)
    try:
        with httpx.Client() as client:
            complete = (
                relay_completion(
                    client,
                    annotator.base_url,
                    annotator.model,
                    api_key=key,
                    timeout_s=annotator.timeout_s,
                )
                if annotator
                else None
            )
            return train_from_warehouse(
                con,
                model_dir,
                use=labels,
                taxonomy=load_taxonomy(taxonomy_path),
                annotator=annotator,
                complete=complete,
                confidence_threshold=settings.classifier.confidence_threshold,
                progress=logger.info,
            )
    finally:
        con.close()


@task(name="predict-task-types")
def predict_task(
    warehouse_path: str, model_dir: str, threshold: float | None, only_missing: bool = False
) -> dict[str, Any]:
    from prefect.logging import get_run_logger

    con = open_warehouse(warehouse_path)
    try:
        return predict_warehouse(
            con,
            model_dir,
            threshold=threshold,
            only_missing=only_missing,
            progress=get_run_logger().info,
        )
    finally:
        con.close()


@task(name="classifier-page-data")
def page_data_task(warehouse_path: str, model_dir: str) -> dict[str, Any]:
    con = open_warehouse(warehouse_path, read_only=True)
    try:
        return classifier_page_data(con, model_dir)
    finally:
        con.close()


@flow(name="train-classifier")
def train_classifier_flow(
    warehouse_path: str,
    model_dir: str | None = None,
    labels: str = "all",
    config_path: str | None = None,
    taxonomy_path: str | None = None,
) -> dict[str, Any]:
    """Label, train, export and save the classifier; returns the training summary."""
    folder = model_dir or str(default_model_dir(warehouse_path))
    return train_task(warehouse_path, folder, labels, config_path, taxonomy_path)


@flow(name="predict-task-types")
def predict_flow(
    warehouse_path: str, model_dir: str | None = None, threshold: float | None = None
) -> dict[str, Any]:
    """Predict every request in the warehouse; returns the run summary with its drift."""
    folder = model_dir or str(default_model_dir(warehouse_path))
    return predict_task(warehouse_path, folder, threshold)


@flow(name="classify")
def classify_flow(
    warehouse_path: str,
    model_dir: str | None = None,
    labels: str = "all",
    config_path: str | None = None,
    taxonomy_path: str | None = None,
) -> dict[str, Any]:
    """Train then predict; returns both summaries and the plan page's classifier data."""
    folder = model_dir or str(default_model_dir(warehouse_path))
    trained = train_task(warehouse_path, folder, labels, config_path, taxonomy_path)
    predicted = predict_task(warehouse_path, folder, None)
    page = page_data_task(warehouse_path, folder)
    return {"train": trained, "predict": predicted, "page": page}
