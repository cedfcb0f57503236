"""The warehouse counts conversations in SQL exactly as the planner would count its turns."""

from __future__ import annotations

from pathlib import Path

from demo.logs import write_chat_log
from planner.evaluate.conversations import Turn, summarize_turns
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths
from warehouse.scores import conversation_shape


def test_conversation_shape_matches_the_turns_counted_one_by_one(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl"
    write_chat_log(logs, 400, seed=3)
    con = open_warehouse(tmp_path / "w.duckdb")
    ingest_paths(con, [logs])
    # a prediction overrides a label for one request of a multi-turn conversation
    ((request_id,),) = con.execute(
        "SELECT request_id FROM requests WHERE turn_index = 1 ORDER BY request_id LIMIT 1"
    ).fetchall()
    con.execute(
        "INSERT INTO predictions (request_id, task_type, confidence, uncertain, "
        "classifier_version, prediction_run, predicted_at) "
        "VALUES (?, 'reasoning', 0.9, false, 'tc-test', 'p-1', now()::TIMESTAMP)",
        [request_id],
    )
    rows = con.execute(
        """
        SELECT r.conversation_id, coalesce(r.turn_index, 0),
               coalesce(p.task_type, r.label_task_type, 'unknown')
        FROM requests AS r LEFT JOIN predictions AS p USING (request_id)
        ORDER BY 1, 2, r.ts, r.request_id
        """
    ).fetchall()
    expected = summarize_turns(Turn(str(c), int(t), str(k)) for c, t, k in rows)

    shape = conversation_shape(con)

    assert shape["requests"] == expected.requests == 400
    assert tuple(shape["depth"]) == expected.depth
    assert tuple(shape["later"]) == expected.later
    assert any(size >= 2 for size, _ in expected.depth)  # the data has multi-turn conversations
    assert any(b == "reasoning" for _, b, _ in expected.later)  # the prediction counted
