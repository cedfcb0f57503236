"""The workload profile as a self-contained HTML page (``out/<run-id>/profile.html``).

It shows what the warehouse holds before any replay: the page a team reads first, and the
workload section the full plan grows from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.report.render import TEMPLATES, environment


def render_profile(
    profile: dict[str, Any],
    *,
    ingest: dict[str, Any] | None = None,
    classifier: dict[str, Any] | None = None,
    title: str = "Workload profile",
    templates: Path = TEMPLATES,
) -> str:
    """HTML for a profile from :func:`warehouse.profile_warehouse` (plain data in, text out)."""
    peak = max((int(r["requests"]) for r in profile["by_day"]), default=0)
    hour_peak = max((int(r["requests"]) for r in profile["by_hour"]), default=0)
    return (
        environment(templates)
        .get_template("profile.html.j2")
        .render(
            title=title,
            p=profile,
            ingest=ingest,
            classifier=classifier,
            day_peak=max(peak, 1),
            hour_peak=max(hour_peak, 1),
        )
    )


def write_profile(path: Path, profile: dict[str, Any], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_profile(profile, **kwargs), encoding="utf-8")
    return path
