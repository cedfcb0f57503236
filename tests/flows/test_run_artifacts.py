"""A run's artifacts as a real Prefect flow run creates them, read back through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.run_artifacts import artifact_key, route_rows

ROUTES: list[dict[str, Any]] = [
    {"task_type": "classification", "route": "phi-4-mini-int4", "fallbacks": ["relay", "gpt-4.1"]},
    {"task_type": "summarization", "route": "relay", "quality": 0.97, "p95_ms": float("nan")},
]


def test_route_rows_share_columns_and_json_safe_cells() -> None:
    rows = route_rows(ROUTES)
    assert [list(r) for r in rows] == [["task_type", "route", "fallbacks", "quality", "p95_ms"]] * 2
    assert rows[0]["fallbacks"] == "relay → gpt-4.1" and rows[0]["quality"] is None
    assert rows[1]["p95_ms"] is None and rows[1]["quality"] == 0.97
    assert artifact_key("Plan Link_2026") == "plan-link-2026"
    with pytest.raises(ValueError):
        artifact_key("__")


@pytest.mark.usefixtures("prefect_harness")
def test_artifacts_of_a_flow_run(tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Artifact
    from prefect.context import get_run_context

    from flows.run_artifacts import publish_run_artifacts

    run_dir = tmp_path / "out dir" / "20261120-0200-ab12"
    run_dir.mkdir(parents=True)
    plan = run_dir / "plan.html"
    plan.write_text("<html></html>", encoding="utf-8")
    index = tmp_path / "out dir" / "index.html"
    summary = "## Run 20261120-0200-ab12\n\n**2 of 2** task types move off gpt-4.1."

    @flow(name="artifact-test")
    def publishing() -> tuple[str, list[str]]:
        keys = publish_run_artifacts(
            run_id="20261120-0200-ab12",
            plan_html=plan,
            markdown=summary,
            routes=ROUTES,
            index_html=index,
        )
        return str(get_run_context().flow_run.id), keys  # type: ignore[union-attr]

    run_id, keys = publishing()
    assert keys == ["plan-link", "plan-summary", "plan-routes", "plan-runs-index"]

    with get_client(sync_client=True) as client:
        # (prefect 3.8.8's read_artifacts / Artifact.get send unset filters as nulls, which its own
        # server refuses with a 422: post the filter the API documents instead)
        response = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC"},
        )
    found = [Artifact.model_validate(a) for a in response.json()]
    by_key = {str(a.key): a for a in found}
    assert sorted(by_key) == sorted(keys)
    assert by_key["plan-link"].data == (
        f"[Migration plan, run 20261120-0200-ab12]({plan.resolve().as_uri()})"
    )
    assert "out%20dir/20261120-0200-ab12/plan.html" in str(by_key["plan-link"].data)
    assert by_key["plan-summary"].type == "markdown" and by_key["plan-summary"].data == summary
    assert by_key["plan-routes"].type == "table"
    assert json.loads(str(by_key["plan-routes"].data)) == route_rows(ROUTES)
    assert str(by_key["plan-runs-index"].data).endswith(f"({index.resolve().as_uri()})")
    assert "20261120-0200-ab12" in str(by_key["plan-routes"].description)


@pytest.mark.usefixtures("prefect_harness")
def test_without_a_plan_and_bad_prefix() -> None:
    from prefect import flow

    from flows.run_artifacts import publish_run_artifacts

    @flow(name="artifact-test-no-plan")
    def publishing() -> list[str]:
        return publish_run_artifacts(
            run_id="r2", plan_html=None, markdown="failed early", routes=[], prefix="nightly"
        )

    assert publishing() == ["nightly-summary", "nightly-routes"]
    with pytest.raises(ValueError, match="lowercase"):
        publish_run_artifacts(run_id="r", plan_html=None, markdown="x", routes=[], prefix="Plan")
