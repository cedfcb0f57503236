"""Prefect flows and the ``migration-planner`` CLI: the only layer that imports Prefect.

Prefect reads its settings when it is first imported, so the defaults for runs of this project
are set here, before any flow module imports it: no telemetry, a project-local home, and Prefect's
own logs only from warnings up (the stages print their own progress). Variables already set win.
"""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
