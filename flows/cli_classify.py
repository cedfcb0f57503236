"""`migration-planner classify ...`: Train, evaluate and run the task-type classifier."""

from __future__ import annotations

from flows.cli_common import new_app

app = new_app("Train, evaluate and run the task-type classifier.")
