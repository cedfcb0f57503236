"""Evidence that stays true: a weights-only change of a local model replays again (and a worker
with the old weights is refused), replays of an older fingerprint are not evidence, a relay's
answers expire and renew, a relay that starts serving another model is noticed, and every sampled
request has evidence when its prompt was replayed for another request. Real DuckDB files, a real
tiny ONNX model whose weights are rewritten in place, a real relay on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from demo.logs import generate_records, write_chat_log
from pipeline.candidates import plan_candidates
from pipeline.current import current_evidence, stale_notes
from pipeline.evidence import read_plan_inputs, score_replays
from pipeline.replay import make_replay
from planner.errors import BackendError
from planner.models.server import ServerThread
from planner.replay.freshness import Renewal, utc_now
from planner.replay.shards import LocalModelSpec, replay_shard, request_stop
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths
from warehouse.scores import evidence_rows

# Every sampled request replayed (not in adaptive rounds): these tests are about what is stored.
REPLAY = "\n[verdict]\nadaptive = false\n[replay]\nper_type = 3\nuncertain = 0\nmax_new_tokens = 4\nseed = 2\n"


def ingest(settings: PlannerSettings, *paths: Path) -> None:
    con = open_warehouse(settings.warehouse.path)
    try:
        ingest_paths(con, list(paths))
    finally:
        con.close()


def sql(settings: PlannerSettings, query: str, params: list[Any] | None = None) -> list[Any]:
    con = open_warehouse(settings.warehouse.path)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


def rewrite_weights_in_place(folder: Path, factor: float) -> None:
    """A retrain of the same architecture: other weights, same sizes, same graph file."""
    data = folder / "model.onnx.data"
    floats = np.frombuffer(data.read_bytes(), dtype=np.float32) * np.float32(factor)
    with data.open("r+b") as fh:
        fh.write(floats.astype(np.float32).tobytes())


def local_settings(pipe: Any, tmp_path: Path, tiny_model_dir: Path) -> tuple[PlannerSettings, Path]:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = pipe.write_settings(
        tmp_path,
        f'[[candidates]]\nname = "tiny"\nkind = "local"\npath = {json.dumps(str(model))}\n'
        "threads = 1\n" + REPLAY,
    )
    write_chat_log(tmp_path / "logs.jsonl", 60, seed=5)
    ingest(settings, tmp_path / "logs.jsonl")
    return settings, model


def by_candidate(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["candidate"]: r for r in result["candidates"]}


def test_a_weights_only_change_replays_again_and_old_workers_are_refused(
    pipe: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings, model = local_settings(pipe, tmp_path, tiny_model_dir)
    first = by_candidate(pipe.replay_here(settings))["tiny"]
    total = first["planned"]
    assert total > 5 and first["sent"] == total and first["stopped"] is None
    assert by_candidate(pipe.replay_here(settings))["tiny"]["sent"] == 0  # all cached

    sizes = {p.name: p.stat().st_size for p in model.iterdir()}
    rewrite_weights_in_place(model, 0.5)
    assert {p.name: p.stat().st_size for p in model.iterdir()} == sizes

    # a worker that holds the old model (or has the new folder) is not the one the run planned
    spec = LocalModelSpec("tiny", str(model), 1, 4)
    request = {"request_id": "r", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BackendError, match="not the one the run planned with"):
        replay_shard(asdict(spec), first["fingerprint"], [request], print)

    second = by_candidate(pipe.replay_here(settings))["tiny"]
    assert second["fingerprint"] != first["fingerprint"]
    assert second["sent"] == total and second["cached"] == 0
    rows = sql(
        settings,
        "SELECT candidate_fingerprint, count(*) FROM replays GROUP BY 1 ORDER BY 1",
    )
    assert sorted(n for _, n in rows) == [total, total]  # both models' answers are stored ...
    con = open_warehouse(settings.warehouse.path)
    try:
        current = current_evidence(settings)
        evidence = evidence_rows(con, None, current.fingerprints, current.fresh_after)
    finally:
        con.close()
    replayed = [r for r in evidence if r["candidate"] == "tiny"]
    assert len(replayed) == total  # ... and only the current model's count
    assert current.fingerprints["tiny"] == second["fingerprint"]


def test_replays_of_a_stale_fingerprint_are_not_evidence(
    pipe: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings, model = local_settings(pipe, tmp_path, tiny_model_dir)
    total = by_candidate(pipe.replay_here(settings))["tiny"]["sent"]
    candidates = plan_candidates(settings)

    # A new model, and a replay interrupted after its first shard: old and new answers are
    # stored under one name.
    rewrite_weights_in_place(model, 2.0)

    class StopAfterFirstShard(pipe.DirectShards):  # type: ignore[misc, name-defined]
        def replay(self, spec: LocalModelSpec, fingerprint: str, shard: Any) -> Any:
            out = super().replay(spec, fingerprint, shard)
            request_stop()  # as a first Ctrl-C would: no further shard is dispatched
            return out

    partial = make_replay(
        settings,
        pipe.DirectRelays(settings, str(settings.warehouse.path)),
        StopAfterFirstShard(),
        shard_size=4,
    )
    assert by_candidate(partial)["tiny"]["sent"] == 4

    inputs = read_plan_inputs(
        str(settings.warehouse.path), candidates, current=current_evidence(settings)
    )
    tiny = [o for o in inputs.observations if o.candidate == "tiny"]
    assert len(tiny) == 4  # only the new model's answers are evidence
    assert inputs.stale == {"tiny": {"fingerprint": total - 4}}  # the rest: not replayed
    notes = stale_notes(inputs.stale, {})
    assert notes and f"{total - 4} sampled request(s)" in notes[0] and "older model" in notes[0]
    scored = score_replays(settings, str(settings.warehouse.path), None, False)
    assert scored["replays"] == sum(1 for o in tiny if o.error_kind is None)  # stale: unscored

    # Without the current fingerprints every stored answer would have counted (the old bug).
    everything = read_plan_inputs(str(settings.warehouse.path), candidates)
    assert len([o for o in everything.observations if o.candidate == "tiny"]) == total

    # A folder that is gone has no evidence at all, and the plan says why.
    shutil.rmtree(model)
    gone = current_evidence(settings)
    assert "tiny" not in gone.fingerprints and "no such directory" in gone.unreadable["tiny"]
    assert "cannot be read" in stale_notes({}, gone.unreadable)[0]


def test_relay_answers_expire_renew_in_slices_and_a_new_served_model_replays(
    pipe: Any, tmp_path: Path, relay: ServerThread
) -> None:
    settings = pipe.write_settings(
        tmp_path,
        pipe.relay_block("relay", relay.base_url) + REPLAY + "relay_ttl_days = 4\n",
    )
    write_chat_log(tmp_path / "logs.jsonl", 60, seed=5)
    ingest(settings, tmp_path / "logs.jsonl")
    chat = "/v1/chat/completions"

    def sent_to_relay() -> int:
        return sum(1 for _, path, status in relay.request_log if path == chat and status == 200)

    first = by_candidate(pipe.replay_here(settings))["relay"]
    total = first["planned"]
    assert first["sent"] == total == sent_to_relay()
    assert first["serving"] == {
        "served_model": "echo",  # what the answers named, recorded
        "system_fingerprint": None,
        "changed_from": None,
    }
    assert by_candidate(pipe.replay_here(settings))["relay"]["sent"] == 0

    # Two days later: not expired (TTL 4 days), but tonight's slice (a quarter) is renewed.
    sql(settings, "UPDATE replays SET created_at = created_at - INTERVAL 2 DAY")
    renewal = Renewal(4, utc_now())
    keys = [k for (k,) in sql(settings, "SELECT replay_id FROM replays")]
    in_slice = sum(1 for k in keys if renewal.slice_of(k) == renewal.tonight())
    second = by_candidate(pipe.replay_here(settings))["relay"]
    assert second["sent"] == second["renewed"] == in_slice
    assert second["cached"] == total - in_slice

    # Five days later everything has expired: sent again, and stale until it is.
    sql(settings, "UPDATE replays SET created_at = created_at - INTERVAL 5 DAY")
    inputs = read_plan_inputs(
        str(settings.warehouse.path), plan_candidates(settings), current=current_evidence(settings)
    )
    assert inputs.stale == {"relay": {"expired": total}}
    assert not [o for o in inputs.observations if o.candidate == "relay"]
    third = by_candidate(pipe.replay_here(settings))["relay"]
    assert third["sent"] == total
    assert sent_to_relay() == 2 * total + in_slice

    # The provider moves the alias: one expired answer is renewed, its answer names another
    # model, and the rest of the sample is sent again to it in the same run.
    relay.app.state.served_model = "echo-v2"
    relay.app.state.system_fingerprint = "fp_7d2b"
    sql(
        settings,
        "UPDATE replays SET created_at = created_at - INTERVAL 30 DAY WHERE replay_id = ?",
        [keys[0]],
    )
    fourth = by_candidate(pipe.replay_here(settings))["relay"]
    assert fourth["serving"] == {
        "served_model": "echo-v2",
        "system_fingerprint": "fp_7d2b",
        "changed_from": "echo",
    }
    assert fourth["sent"] == total and sent_to_relay() == 3 * total + in_slice
    served = sql(
        settings, "SELECT served_model, system_fingerprint, count(*) FROM replays GROUP BY 1, 2"
    )
    assert served == [("echo-v2", "fp_7d2b", total)]
    history = sql(settings, "SELECT served_model FROM relay_serving ORDER BY since")
    assert history == [("echo",), ("echo-v2",)]
    assert by_candidate(pipe.replay_here(settings))["relay"]["sent"] == 0


def test_a_relay_serving_another_model_makes_old_answers_stale(
    pipe: Any, tmp_path: Path, relay: ServerThread
) -> None:
    settings = pipe.write_settings(tmp_path, pipe.relay_block("relay", relay.base_url) + REPLAY)
    write_chat_log(tmp_path / "logs.jsonl", 40, seed=6)
    ingest(settings, tmp_path / "logs.jsonl")
    total = by_candidate(pipe.replay_here(settings))["relay"]["sent"]
    # What the relay serves is recorded as changed (another run saw it), nothing replayed yet.
    from warehouse.replays import Serving, record_serving

    con = open_warehouse(settings.warehouse.path)
    try:
        fp = current_evidence(settings).fingerprints["relay"]
        record_serving(con, fp, "relay", Serving("echo-v2", None), 1)
    finally:
        con.close()
    inputs = read_plan_inputs(
        str(settings.warehouse.path), plan_candidates(settings), current=current_evidence(settings)
    )
    assert inputs.stale == {"relay": {"served_model": total}}
    assert "no longer serves" in stale_notes(inputs.stale, {})[0]


def test_every_sampled_request_has_evidence_when_its_prompt_was_replayed_for_another(
    pipe: Any, tmp_path: Path, relay: ServerThread
) -> None:
    settings = pipe.write_settings(
        tmp_path,
        pipe.relay_block("relay", relay.base_url)
        + REPLAY.replace("per_type = 3", "per_type = 500"),
    )
    records = [r for r in generate_records(80, seed=7) if r.get("status_code", 200) < 400]
    first_log = tmp_path / "prod-a.jsonl"
    first_log.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    ingest(settings, first_log)
    first = pipe.replay_here(settings)
    assert first["sample"]["multi_model_prompts"] < first["sample"]["total"]

    # The same prompts logged again under a second production model (another team's traffic).
    copies = []
    for r in records:
        copy = json.loads(json.dumps(r))
        copy["id"] = "b-" + r["id"]
        copy["request"]["model"] = "gpt-4o"
        copy["response"]["model"] = "gpt-4o-2024-08-06"
        copies.append(copy)
    second_log = tmp_path / "prod-b.jsonl"
    second_log.write_text("\n".join(json.dumps(r) for r in copies) + "\n", encoding="utf-8")
    ingest(settings, second_log)
    second = pipe.replay_here(settings)
    sample = second["sample"]
    distinct = sql(
        settings,
        "SELECT count(DISTINCT md5(messages::VARCHAR)) FROM requests WHERE status_code < 400",
    )[0][0]
    assert sample["total"] == distinct  # each prompt sampled once ...
    assert sample["multi_model_prompts"] == distinct  # ... and the sample says why
    assert by_candidate(second)["relay"]["sent"] == 0  # every prompt was replayed already

    sampled = {
        rid for (rid,) in sql(settings, "SELECT request_id FROM samples WHERE sample_id = ?",
                              [sample["sample_id"]])
    }  # fmt: skip
    moved = {rid for rid in sampled if rid.startswith("b-")}
    assert moved  # some prompts are now sampled through their copy under the second model
    con = open_warehouse(settings.warehouse.path)
    try:
        current = current_evidence(settings)
        rows = evidence_rows(con, sample["sample_id"], current.fingerprints, current.fresh_after)
    finally:
        con.close()
    with_replay = {r["request_id"] for r in rows if r["candidate"] == "relay"}
    assert with_replay == sampled  # every sampled request has evidence, the copies included
    assert by_candidate(second)["relay"]["stored"]["replays"] == len(sampled)
