"""Runs over time: the run folder and id, the run history, what changed between two runs, and
the webhook that tells a person when something needs attention.

- :mod:`planner.runs.folder` — ``out/<run-id>/`` written beside and renamed into place; the one
  run-id format;
- :mod:`planner.runs.history` — one row per run and per task type's decision, in any SQL database;
- :mod:`planner.runs.diff` — figures of a run from its metrics.json, the diff of two runs, the
  attention signals;
- :mod:`planner.runs.webhook` — the "needs attention" post to a chat webhook.

May import: ``planner`` root modules (errors, settings, messages, stats, redact) and
:mod:`planner.replay.wire` (Retry-After); not the evaluation or report rooms.
"""
