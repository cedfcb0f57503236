"""The classifier stages as Prefect flows for the demo and the nightly run: thin wrappers over
:mod:`pipeline.classify` and :mod:`pipeline.predict` (the CLI calls those directly; a Prefect
server start would cost more than the job)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.logging import get_run_logger

from pipeline.classify import default_model_dir, train_with_settings
from pipeline.predict import page_data, predict_with_model
from planner.settings import load_settings


@task(name="train-classifier")
def train_task(
    config_path: str | None,
    warehouse_path: str,
    model_dir: str,
    labels: str,
    taxonomy_path: str | None,
) -> dict[str, Any]:
    """Deterministic given the labels: no retries (the annotator counts its own failures)."""
    settings = load_settings(config_path)
    return train_with_settings(
        settings, warehouse_path, model_dir, labels, taxonomy_path, get_run_logger().info
    )


@task(name="predict-task-types")
def predict_task(
    warehouse_path: str, model_dir: str, threshold: float | None, only_missing: bool = False
) -> dict[str, Any]:
    return predict_with_model(
        warehouse_path, model_dir, threshold, only_missing, get_run_logger().info
    )


@task(name="classifier-page-data")
def page_data_task(warehouse_path: str, model_dir: str) -> dict[str, Any]:
    return page_data(warehouse_path, model_dir)


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
    return train_task(config_path, warehouse_path, folder, labels, taxonomy_path)


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
    trained = train_task(config_path, warehouse_path, folder, labels, taxonomy_path)
    predicted = predict_task(warehouse_path, folder, None)
    page = page_data_task(warehouse_path, folder)
    return {"train": trained, "predict": predicted, "page": page}
