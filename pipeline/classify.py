"""The task-type classifier as stages: label -> train -> export -> predict, plus the plan page's
figures. Plain functions take an open warehouse and plain values; the CLI calls them directly and
``flows.classify_flow`` wraps them as Prefect tasks for the demo and the nightly run.

The relay annotator asks a relay candidate of ``planner.toml`` (``[classifier] annotator =
"<candidate name>"``) through the project's one relay client (:mod:`planner.replay.relay`: its
rate limits, retries, breaker and a cost budget); its key is read from the environment variable
the candidate names at the moment the header is built, and is never a flow parameter, a log line
or a warehouse value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from classifiers import (
    PROMPT_VERSION,
    AnnotationReport,
    AnnotatorError,
    ClassifierError,
    LabelRecord,
    LabelResolution,
    ModelParams,
    SentenceEncoder,
    Taxonomy,
    TrainingError,
    agreement,
    annotate,
    build_card,
    check_parity,
    default_lexicon,
    export_onnx,
    few_shot_examples,
    label_source_of,
    load_encoder,
    load_taxonomy,
    normalize_labels,
    read_card,
    resolve_labels,
    rule_label,
    rule_precision,
    save_classifier,
    train_classifier,
)
from classifiers.errors import ModelLoadError
from pipeline.stage import Progress, quiet
from planner.errors import AuthError, CompletionError
from planner.replay.completion import completion_function
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.embeddings import WarehouseEmbeddings
from warehouse.errors import EmptyWarehouseError
from warehouse.labels import (
    add_labels,
    iter_unlabeled_messages,
    label_counts,
    labels_by,
    metadata_label_rows,
    read_labels,
    replace_labels,
    request_conversations,
    request_files,
    request_messages,
    unlabeled_for_annotation,
)
from warehouse.predictions import (
    count_requests,
)

Complete = Callable[[list[dict[str, str]]], str]
MODEL_DIR_NAME = "classifier"


def default_model_dir(warehouse_path: Path | str) -> Path:
    """``classifier/`` beside the warehouse file (``./classifier`` for an in-memory warehouse)."""
    text = str(warehouse_path)
    return Path(MODEL_DIR_NAME) if text == ":memory:" else Path(text).parent / MODEL_DIR_NAME


def _messages(messages_json: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(messages_json)
    except (json.JSONDecodeError, TypeError):
        return []
    return value if isinstance(value, list) else []


# --- the relay annotator -------------------------------------------------------------------


@dataclass(frozen=True)
class Annotator:
    """Who labels and how many: ``name`` is recorded as labels.annotator (candidate:model, so
    another model is asked afresh); the endpoint lives in its relay backend."""

    name: str
    max_requests: int = 200


ANNOTATOR_MAX_TOKENS = 12


def annotator_from_settings(settings: PlannerSettings) -> tuple[Annotator, RelayBackend] | None:
    """The annotator ``[classifier] annotator`` names (a relay candidate) and its backend, or
    None. The backend's cost is capped by ``[replay] max_cost_usd`` of its own."""
    from pipeline.replay import relay_backend

    name = settings.classifier.annotator
    if not name:
        return None
    cand = settings.candidate(name)
    if cand.kind != "relay" or not cand.base_url or not cand.model:
        raise ClassifierError(f"classifier.annotator {name!r} must name a relay candidate")
    backend = relay_backend(cand, CostBudget(settings.replay.max_cost_usd), settings.privacy.names)
    annotator = Annotator(  # the prompt's version too: a new prompt asks afresh
        name=f"{cand.name}:{cand.model}:{PROMPT_VERSION}",
        max_requests=settings.classifier.annotate_max,
    )
    return annotator, backend


def annotator_completion(backend: RelayBackend) -> Complete:
    """A ``messages -> label text`` function over the relay client. A failed call is an
    :class:`AnnotatorError` the annotator counts (and the request is asked again next run)."""
    complete = completion_function(backend, max_tokens=ANNOTATOR_MAX_TOKENS, purpose="annotator")

    def ask(messages: list[dict[str, str]]) -> str:
        try:
            return complete(list(messages))
        except CompletionError as exc:
            kind = "timeout" if exc.kind == "timeout" else "http"
            if exc.kind == "connection":
                kind = "transport"
            raise AnnotatorError(kind, exc.reason) from exc
        except AuthError as exc:
            raise AnnotatorError("http", str(exc)) from exc

    return ask


def annotator_agreement(
    con: duckdb.DuckDBPyConnection, annotator: Annotator | None
) -> dict[str, Any] | None:
    """How often the annotator agrees with the human labels, where a request has both."""
    if annotator is None:
        return None
    return agreement(labels_by(con, "relay", annotator.name), labels_by(con, "metadata"))


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

    human = labels_by(con, "metadata")
    examples_from = sorted(human)[:2000]
    human_examples = [(_messages(m), human[rid]) for rid, m in request_messages(con, examples_from)]
    _, report = annotate(
        [(rid, _messages(m)) for rid, m in sample],
        complete,
        taxonomy,
        on_result=store,
        examples=few_shot_examples(human_examples, taxonomy, seed=seed),
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
    progress: Progress = quiet,
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
    confidence_threshold: float | None = 0.5,
    encoder: SentenceEncoder | None = None,
    seed: int = 0,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Labels -> train (held-out evaluation, split by conversation) -> ONNX export
    (parity-checked) -> model folder.

    The figures name their label source ("agreement with the rules" when the rules labeled);
    rule labels weigh by each rule's measured precision; ``confidence_threshold=None`` takes the
    lowest threshold that reaches the target accuracy on held-out rows. ``encoder`` adds a
    sentence-encoder view (its vectors cached in the warehouse's ``embeddings`` table)."""
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
    winners = [resolution.labels[rid] for rid, _ in rows]
    labels = [w.task_type for w in winners]
    conversations = request_conversations(con, ids)
    files = request_files(con, ids)
    precision = rule_precision()
    weights = [
        max(precision.get(name, 0.5) for name in (w.annotator or "").split("+"))
        if w.source == "rules"
        else 1.0
        for w in winners
    ]
    label_source = label_source_of(dict(resolution.by_source))
    progress(f"train: {len(rows)} labeled requests ({_sources_line(resolution.by_source)})")
    trained = train_classifier(
        requests,
        labels,
        taxonomy=taxonomy,
        params=params,
        seed=seed,
        groups=[conversations.get(rid) for rid, _ in rows],
        domains=[files.get(rid) for rid, _ in rows],
        label_source=label_source,
        weights=weights if any(w != 1.0 for w in weights) else None,
        encoder=encoder,
        cache=WarehouseEmbeddings(con) if encoder is not None else None,
    )
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
    if report is not None:
        card["labels"]["annotator_agreement"] = annotator_agreement(con, annotator)
    folder = save_classifier(
        model_dir,
        model,
        card,
        tokenizer_json=encoder.tokenizer_json if encoder is not None else None,
    )
    ev = trained.evaluation
    progress(f"train: held-out {card['figure']} {ev.macro_f1:.3f} on {ev.rows} rows; in {folder}")
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
        "label_source": card.get("label_source"),
        "figure": card.get("figure"),
        "confidence_threshold": card.get("confidence_threshold"),
        "threshold_source": card.get("threshold_source"),
        "suggested_threshold": card.get("suggested_threshold"),
        "selective": ev.to_dict().get("selective"),
        "encoder": card.get("encoder"),
        "lexicon_prior": card["training"]["lexicon_prior"],
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


# --- from the settings: what the flows and the nightly run call ------------------------------


def train_with_settings(
    settings: PlannerSettings,
    warehouse: str,
    model_dir: str,
    labels: str,
    taxonomy_path: str | None = None,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Label (asking the configured annotator, if any), train, export and save the classifier.
    Deterministic given the labels: no retries (the annotator counts its own failures)."""
    found = annotator_from_settings(settings)
    annotator, backend = found if found else (None, None)
    folder = settings.classifier.encoder
    encoder = load_encoder(folder) if folder is not None else None
    con = open_warehouse(warehouse)
    try:
        return train_from_warehouse(
            con,
            model_dir,
            use=labels,
            taxonomy=load_taxonomy(taxonomy_path),
            annotator=annotator,
            complete=annotator_completion(backend) if backend else None,
            confidence_threshold=settings.classifier.confidence_threshold,
            params=ModelParams(lexicon_prior=settings.classifier.lexicon_prior),
            encoder=encoder,
            progress=progress,
        )
    finally:
        con.close()
        if backend is not None:
            backend.close()


def classifier_due(model_dir: Path, retrain_days: float, now: datetime) -> tuple[bool, str]:
    """Train when there is no classifier yet, or it is older than ``retrain_days``."""
    if not (model_dir / "classifier.onnx").is_file():
        return True, "no classifier yet"
    try:
        created = datetime.fromisoformat(read_card(model_dir)["created_at"])
    except (ModelLoadError, KeyError, TypeError, ValueError) as exc:
        return True, f"its model card is unusable ({exc})"
    age_days = (now - created).total_seconds() / 86400
    if age_days >= retrain_days:
        return True, f"classifier is {age_days:.1f} days old (retrain_days {retrain_days:g})"
    return False, f"classifier is {age_days:.1f} days old"


def classify_when_due(
    settings: PlannerSettings, warehouse: str, progress: Progress = quiet
) -> dict[str, Any]:
    """Train when due (``[run] retrain_days``), predict when the requests or the classifier
    changed: a new classifier predicts everything, the same one only what it has not seen."""
    model_dir = default_model_dir(warehouse)
    due, why = classifier_due(model_dir, settings.run.retrain_days, datetime.now(UTC))
    out: dict[str, Any] = {"model_dir": str(model_dir), "trained": due, "why": why}
    if due:
        progress(f"training the classifier: {why}")
        out["train"] = train_with_settings(
            settings, warehouse, str(model_dir), settings.classifier.labels, progress=progress
        )
    from pipeline.predict import predict_with_model, predictions_current

    version = str(read_card(model_dir)["version"])
    if predictions_current(warehouse, version):
        out["predicted"] = False
    else:
        out["predicted"] = True
        out["predict"] = predict_with_model(
            warehouse, str(model_dir), only_missing=not due, progress=progress
        )
    return out
