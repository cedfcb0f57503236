"""Runs over time: the run folder and id, the run history, what changed between two runs, and
the webhook that tells a person when something needs attention.

- :mod:`planner.runs.folder` — ``out/<run-id>/`` written beside and renamed into place; the one
  run-id format;
- :mod:`planner.runs.history` — one row per run and per task type's decision, in any SQL
  database, each run in the scope (warehouse) it belongs to;
- :mod:`planner.runs.diff` — figures of a run from its metrics.json, the diff of two runs;
- :mod:`planner.runs.alerts` — the attention signals: flipped decisions, deployed routes that
  tonight's evidence no longer supports, relays serving another model, traffic drift between
  windows, a retrained classifier;
- :mod:`planner.runs.webhook` — the "needs attention" post to a chat webhook.

May import: ``planner`` root modules (errors, settings, messages, stats, redact) and
:mod:`planner.replay.wire` (Retry-After); not the evaluation or report rooms.
"""
