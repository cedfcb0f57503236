"""What people read and machines load: the HTML plan (:mod:`planner.report.render`, with inline
SVG :mod:`planner.report.charts`), the workload profile page (:mod:`planner.report.profile`), the
runs index and diff pages (:mod:`planner.report.pages`), and the gateway configs — routing,
LiteLLM, rollback — with metrics.json (:mod:`planner.report.artifacts`).

Every page is self-contained (no network fetches) and escapes log content (autoescape on).
May import: the ``planner`` root modules, :mod:`planner.evaluate` and :mod:`planner.runs`.
"""
