"""`migration-planner classify ...`: Train, evaluate and run the task-type classifier.

The commands call the pipeline's stage functions directly (a Prefect server start would cost more
than the job); ``classify_flow`` wraps the same functions as flows for the demo and the nightly
run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from classifiers import LABEL_CHOICES, PRIOR_CHOICES, load_taxonomy
from flows.cli_common import (
    ConfigOption,
    JsonOption,
    UserError,
    new_app,
    print_json,
    progress,
    settings_from,
    warehouse_path,
)
from pipeline.classify import default_model_dir, train_with_settings
from pipeline.endpoints import check_endpoints
from pipeline.predict import evaluate_file, predict_one, predict_warehouse
from warehouse.connection import open_warehouse

app = new_app("Train, evaluate and run the task-type classifier.")

WarehouseOption = typer.Option(
    None,
    "--warehouse",
    "-w",
    show_default=False,
    help="DuckDB warehouse file (default: [warehouse] path in planner.toml, "
    "else ./planner.duckdb).",
)
ModelDirOption = typer.Option(
    None,
    "--model-dir",
    "-m",
    show_default=False,
    help="Classifier folder (classifier.onnx + model_card.json); default: classifier/ beside "
    "the warehouse file.",
)
TaxonomyOption = typer.Option(
    None,
    "--taxonomy",
    show_default=False,
    help="A JSON or TOML taxonomy file replacing the built-in task types.",
)


def _model_dir(model_dir: Path | None, warehouse: Path) -> Path:
    return model_dir if model_dir is not None else default_model_dir(warehouse)


def _per_class_table(title: str, per_class: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for col in ("task type", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "task type" else "right")
    for name, row in per_class.items():
        table.add_row(
            name,
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    return table


def _confusion_table(confusion: dict[str, Any]) -> Table:
    labels = confusion["labels"]
    table = Table(
        title="Confusion (rows: true, columns: predicted)",
        title_justify="left",
        show_edge=False,
        header_style="bold",
    )
    table.add_column("")
    for label in labels:
        table.add_column(label[:8], justify="right")
    for label, row in zip(labels, confusion["matrix"], strict=True):
        table.add_row(label, *(str(v) if v else "·" for v in row))
    return table


@app.command()
def train(
    labels: str = typer.Option(
        "all",
        "--labels",
        "-l",
        help="Label sources: metadata (human labels logged with requests), rules (heuristics), "
        "relay (the LLM annotator), all (human + relay; rules only when neither exists).",
    ),
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    model_dir: Path | None = ModelDirOption,
    taxonomy: Path | None = TaxonomyOption,
    lexicon_prior: str | None = typer.Option(
        None,
        "--lexicon-prior",
        show_default=False,
        help="auto | on | off: train with the lexicon as a prior ('on': better on traffic unlike "
        "the labeled requests; 'off': closer fit to them; 'auto', the default: whichever "
        "validates better on the training requests). Overrides [classifier] lexicon_prior.",
    ),
    encoder: Path | None = typer.Option(
        None,
        "--encoder",
        show_default=False,
        help="An ONNX sentence-encoder folder whose embeddings the classifier uses beside its "
        "n-grams (`make encoder`: all-MiniLM-L6-v2; `make encoder-mpnet`: all-mpnet-base-v2, "
        "slower). Overrides [classifier] encoder.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Label, train (held-out evaluation), export to ONNX (parity-checked) and save the model."""
    if labels not in LABEL_CHOICES:
        raise UserError(f"--labels must be one of {', '.join(LABEL_CHOICES)}; got {labels!r}")
    if lexicon_prior is not None and lexicon_prior not in PRIOR_CHOICES:
        raise UserError(
            f"--lexicon-prior must be one of {', '.join(PRIOR_CHOICES)}; got {lexicon_prior!r}"
        )
    settings = settings_from(config)
    overrides: dict[str, Any] = {}
    if lexicon_prior is not None:
        overrides["lexicon_prior"] = lexicon_prior
    if encoder is not None:
        overrides["encoder"] = encoder  # load_encoder expands ~, as for the setting
    if overrides:
        section = settings.classifier.model_copy(update=overrides)
        settings = settings.model_copy(update={"classifier": section})
    if labels in ("relay", "all"):
        check_endpoints(settings, [])  # the annotator, when one is configured
    path = warehouse_path(settings, warehouse)
    folder = _model_dir(model_dir, path)
    load_taxonomy(taxonomy)  # a bad taxonomy file is one clear error before anything starts
    open_warehouse(path, create=False).close()  # missing or locked: one line
    summary = train_with_settings(
        settings,
        str(path),
        str(folder),
        labels,
        str(taxonomy) if taxonomy is not None else None,
        progress=progress,
    )
    if as_json:
        print_json(summary)
        return
    console = Console()
    console.print(f"Classifier {summary['classifier_version']} saved in {summary['model_dir']}")
    sources = ", ".join(f"{k}: {v}" for k, v in summary["label_sources"].items())
    console.print(
        f"Labels by source: {sources}"
        + ("  (rules bootstrap)" if summary["rules_bootstrap"] else "")
    )
    console.print(
        f"Held-out: macro-F1 {summary['macro_f1']:.3f}, accuracy {summary['accuracy']:.3f}, "
        f"ECE {summary['ece']:.3f} on {summary['held_out_rows']} rows"
    )
    if summary.get("encoder"):
        enc = summary["encoder"]
        console.print(f"Encoder: {enc['name']} ({enc['dimensions']} dimensions) beside the n-grams")
    prior = summary["lexicon_prior"]
    if prior is not None:
        s = prior["scores"]
        measured = (
            f"; {summary['figure']} with {s['on']:.3f}, without {s['off']:.3f}, "
            f"standard error of the difference {s['se']:.3f}"
            if s
            else ""
        )
        console.print(
            f"Lexicon prior: {'on' if prior['use'] else 'off'} ({prior['how']}{measured})"
        )
    console.print(_per_class_table("Per task type (held out)", summary["per_class"]))
    for note in summary["warnings"]:
        console.print(f"note: {note}")


@app.command()
def predict(
    text: str | None = typer.Option(
        None,
        "--text",
        "-t",
        show_default=False,
        help="Classify this one prompt instead of the warehouse.",
    ),
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    model_dir: Path | None = ModelDirOption,
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        show_default=False,
        help="Confidence below which a prediction is uncertain (default: the model card's).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Predict the task type of every request in the warehouse (or of one --text) through ONNX."""
    settings = settings_from(config)
    path = warehouse_path(settings, warehouse)
    folder = _model_dir(model_dir, path)
    if text is not None:
        result = predict_one(folder, text)
        if as_json:
            print_json(result)
        else:
            flag = " (uncertain)" if result["uncertain"] else ""
            typer.echo(f"{result['task_type']}  confidence {result['confidence']:.3f}{flag}")
        return
    con = open_warehouse(path, create=False)
    try:
        summary = predict_warehouse(con, folder, threshold=threshold, progress=progress)
    finally:
        con.close()
    if as_json:
        print_json(summary)
        return
    console = Console()
    console.print(
        f"Prediction run {summary['run']}: {summary['rows']} requests in {summary['seconds']} s "
        f"({summary['rows_per_s']} rows/s), {summary['uncertain']} uncertain "
        f"(< {summary['confidence_threshold']})"
    )
    table = Table(title="Task mix", title_justify="left", show_edge=False, header_style="bold")
    table.add_column("task type")
    table.add_column("requests", justify="right")
    table.add_column("share", justify="right")
    total = max(summary["rows"], 1)
    for name, n in summary["task_mix"].items():
        table.add_row(name, str(n), f"{n / total:.1%}")
    console.print(table)
    drift = summary["drift"]
    if drift is None:
        console.print("Drift: first prediction run, nothing to compare with.")
    else:
        console.print(
            f"Drift against {drift['previous_run']}: task mix PSI {drift['mix_psi']:.3f} "
            f"({drift['mix_verdict']}), confidence PSI {drift['confidence_psi']:.3f} "
            f"({drift['confidence_verdict']})"
        )


@app.command("evaluate")
def evaluate_cmd(
    labeled: Path = typer.Option(
        ...,
        "--labeled",
        show_default=False,
        help="Chat-log JSONL whose lines carry metadata.task_type.",
    ),
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    model_dir: Path | None = ModelDirOption,
    taxonomy: Path | None = TaxonomyOption,
    as_json: bool = JsonOption,
) -> None:
    """Score the saved classifier on a labeled file: macro-F1, per-class figures, confusion."""
    settings = settings_from(config)
    folder = _model_dir(model_dir, warehouse_path(settings, warehouse))
    result = evaluate_file(folder, labeled, load_taxonomy(taxonomy))
    if as_json:
        print_json(result)
        return
    console = Console()
    console.print(
        f"{result['file']}: macro-F1 {result['macro_f1']:.3f}, accuracy "
        f"{result['accuracy']:.3f} on {result['rows']} requests, ECE "
        f"{result['calibration']['ece']:.3f}"
    )
    for reason, info in result["skipped"].items():
        console.print(f"skipped {info['lines']} lines ({reason}; first: {info['first_lines']})")
    console.print(_per_class_table("Per task type", result["per_class"]))
    console.print(_confusion_table(result["confusion"]))
