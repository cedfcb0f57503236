"""The gateway files: routing.yaml, litellm.yaml (through LiteLLM's own Router to a real server),
rollback.yaml, metrics.json; and the whole plan flow on a real warehouse, run by Prefect."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from planner.errors import PlanError
from planner.evaluate.conversations import Stickiness
from planner.evaluate.decision import Decision, Objectives, Route
from planner.evaluate.evidence import Candidate
from planner.evaluate.intervals import cp_lower
from planner.evaluate.verdict import looks
from planner.report.artifacts import (
    Triggers,
    litellm_config,
    load_routing,
    production_only_routing,
    rollback_config,
    routing_config,
    validate_routing,
    write_artifacts,
)

OBJ = Objectives(quality_floor=0.95, p95_latency_ms=1800)
SECRETS = {
    "LOCAL_MODEL_API_KEY": "sk-local-SECRET-0001",
    "OPENAI_API_KEY": "sk-prod-SECRET-0002",
    "RELAY_API_KEY": "sk-relay-SECRET-0003",
}


def candidates(
    local_url: str = "http://127.0.0.1:9/v1",
    relay_url: str = "https://relay.example/v1",
    prod_url: str = "https://api.openai.com/v1",
) -> dict[str, Candidate]:
    return {
        "tiny": Candidate("tiny", "local", model="echo", base_url=local_url),
        "relay": Candidate(
            "relay",
            "relay",
            price_in=0.28,
            price_out=0.42,
            rpm=600,
            tpm=1_000_000,
            base_url=relay_url,
            model="deepseek",
            api_key_env="RELAY_API_KEY",
            timeout_s=20,
        ),
        "production": Candidate(
            "production",
            "production",
            price_in=2.0,
            price_out=8.0,
            base_url=prod_url,
            model="gpt-4.1",
            api_key_env="OPENAI_API_KEY",
        ),
    }


def decision() -> Decision:
    return Decision(
        OBJ,
        (
            Route(
                "classification",
                "tiny",
                "local",
                ("relay", "production"),
                "cheapest",
                0.99,
                0.97,
                300.0,
                0.0,
                memory_guard_mb=1500.0,
            ),
            Route(
                "summarization",
                "relay",
                "relay",
                ("production",),
                "cheapest",
                0.97,
                0.955,
                900.0,
                0.4,
            ),
            Route(
                "code",
                "production",
                "production",
                (),
                "no candidate meets the floor",
                1.0,
                1.0,
                1200.0,
                3.0,
            ),
        ),
        uncertain_route="relay",
        uncertain_fallbacks=("production",),
    )


STICKY = Stickiness(100, 40, 20, 0.6, 60, 7, 0.07, 3, 4)


def test_routing_config_schema_version_1() -> None:
    doc = routing_config(
        decision(),
        candidates(),
        classifier_file="classifier.onnx",
        confidence_threshold=0.6,
        stickiness=STICKY,
        run_id="plan-1",
    )
    assert doc["version"] == 1 and doc["run_id"] == "plan-1"
    assert doc["classifier"] == {
        "file": "classifier.onnx",
        "confidence_threshold": 0.6,
        "uncertain_route": "relay",
        "uncertain_fallbacks": ["production"],
    }
    assert doc["stickiness"] == {
        "enabled": True,
        "key": "conversation_id",
        "rule": "first_turn",
        "rerouted_share": 0.07,
    }
    assert doc["default_route"] == "production"
    assert doc["routes"]["classification"] == {
        "route": "tiny",
        "fallbacks": ["relay", "production"],
        "evidence": {"quality_mean": 0.99, "quality_low": 0.97, "latency_p95_ms": 300.0},
        "memory_guard": {"min_free_mb": 1500},
    }
    assert "memory_guard" not in doc["routes"]["summarization"]
    assert doc["routes"]["code"]["fallbacks"] == []
    assert list(doc["endpoints"]) == ["tiny", "relay", "production"]
    assert doc["endpoints"]["relay"]["api_key_env"] == "RELAY_API_KEY"
    assert doc["endpoints"]["tiny"]["api_key_env"] == "LOCAL_MODEL_API_KEY"
    assert all("api_key" not in ep for ep in doc["endpoints"].values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "version: must be 1"),
        (
            lambda d: d["routes"]["code"].update(route="ghost"),
            "routes.code.route: 'ghost' is not an endpoint",
        ),
        (
            lambda d: d["routes"]["summarization"].update(fallbacks=["relay"]),
            "routes.summarization.fallbacks: must not repeat",
        ),
        (
            lambda d: d["routes"]["summarization"].update(memory_guard={"min_free_mb": 10}),
            "routes.summarization.memory_guard: only a local",
        ),
        (
            lambda d: d["endpoints"]["relay"].update(api_key="sk-oops"),
            "endpoints.relay: must not hold an api_key",
        ),
        (lambda d: d["endpoints"]["relay"].update(rpm=0), "endpoints.relay.rpm"),
        (
            lambda d: d["classifier"].update(confidence_threshold=1.5),
            "classifier.confidence_threshold",
        ),
        (lambda d: d["stickiness"].pop("enabled"), "stickiness.enabled"),
    ],
)
def test_validate_routing_names_the_field(change: Any, message: str) -> None:
    doc = routing_config(decision(), candidates())
    change(doc)
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_routing(doc)


def test_litellm_config_shape() -> None:
    cfg = litellm_config(decision(), candidates())
    groups = {m["model_name"]: m["litellm_params"] for m in cfg["model_list"]}
    assert sorted(groups) == ["production", "relay", "tiny"]
    assert groups["relay"] == {
        "model": "openai/deepseek",
        "api_base": "https://relay.example/v1",
        "api_key": "os.environ/RELAY_API_KEY",
        "rpm": 600,
        "tpm": 1_000_000,
        "timeout": 20,
        "input_cost_per_token": pytest.approx(0.28e-6),
        "output_cost_per_token": pytest.approx(0.42e-6),
    }
    assert groups["tiny"]["input_cost_per_token"] == 0.0 and "rpm" not in groups["tiny"]
    rs = cfg["router_settings"]
    assert rs["model_group_alias"] == {
        "route-classification": "tiny",
        "route-summarization": "relay",
        "route-code": "production",
        "route-uncertain": "relay",
        "route-default": "production",
    }
    assert rs["fallbacks"] == [
        {"route-classification": ["relay", "production"]},
        {"route-summarization": ["production"]},
        {"route-uncertain": ["production"]},
    ]
    assert {k: rs[k] for k in ("num_retries", "timeout", "allowed_fails", "cooldown_time")} == {
        "num_retries": 2,
        "timeout": 60.0,
        "allowed_fails": 3,
        "cooldown_time": 30.0,
    }


def test_rollback_chain_triggers_and_one_step_back() -> None:
    routing = routing_config(decision(), candidates())
    rb = rollback_config(
        decision(),
        candidates(),
        routing,
        triggers=Triggers(error_rate=0.05, p95_latency_ms=1800, quality_drop=0.03),
    )
    cls = rb["routes"]["classification"]
    assert [h["hop"] for h in cls["chain"]] == ["tiny", "relay", "production"]
    assert cls["chain"][0]["memory_guard_mb"] == 1500
    assert (cls["chain"][1]["rpm"], cls["chain"][1]["tpm"]) == (600, 1_000_000)
    assert cls["triggers"]["error_rate"] == {"above": 0.05, "window_minutes": 15}
    assert cls["triggers"]["p95_latency_ms"]["above"] == 1800
    assert cls["triggers"]["quality"]["below"] == 0.95  # min(floor, planned 0.99 - 0.03)
    assert rb["routes"]["summarization"]["triggers"]["quality"]["below"] == 0.94  # 0.97 - 0.03
    assert "triggers" not in rb["routes"]["code"]
    assert [h["hop"] for h in rb["uncertain"]["chain"]] == ["relay", "production"]
    back = rb["all_to_production"]["routing"]
    validate_routing(back)
    assert {r["route"] for r in back["routes"].values()} == {"production"}
    assert back["classifier"]["uncertain_route"] == "production"
    assert list(back["endpoints"]) == ["production"]
    assert production_only_routing(routing) == back


def test_write_artifacts_files_and_no_secret_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    metrics = {
        "projection": {"savings_usd": 12.5, "quality": None},
        "routes": [{"task_type": "code"}],
    }
    paths = write_artifacts(
        tmp_path / "run",
        decision(),
        candidates(),
        metrics,
        confidence_threshold=0.6,
        stickiness=STICKY,
        run_id="r1",
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "litellm.yaml",
        "metrics.json",
        "rollback.yaml",
        "routing.yaml",
    ]
    routing = load_routing(paths["routing"])
    assert routing["routes"]["summarization"]["route"] == "relay"
    assert json.loads(paths["metrics"].read_text()) == metrics
    for path in paths.values():
        text = path.read_text()
        for secret in SECRETS.values():
            assert secret not in text
    with pytest.raises(ValueError):  # NaN is not JSON: the report must clean it first
        write_artifacts(tmp_path / "bad", decision(), candidates(), {"x": float("nan")})
    (tmp_path / "broken.yaml").write_text("version: 1\nroutes: [")
    with pytest.raises(PlanError, match=r"broken\.yaml"):
        load_routing(tmp_path / "broken.yaml")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_litellm_router_loads_the_config_and_routes_to_a_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM's Router reads litellm.yaml as written; route aliases reach the right server, and a
    dead relay falls back to production along the chain. Keys come from the environment."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    litellm = pytest.importorskip("litellm")
    from planner.models.server import EchoEngine, ServerThread, create_app

    local_app = create_app(EchoEngine("echo"), api_key=SECRETS["LOCAL_MODEL_API_KEY"])
    prod_app = create_app(EchoEngine("gpt-4.1"), api_key=SECRETS["OPENAI_API_KEY"])
    with ServerThread(local_app) as local, ServerThread(prod_app) as prod:
        cands = candidates(local.base_url, f"http://127.0.0.1:{_closed_port()}/v1", prod.base_url)
        paths = write_artifacts(tmp_path, decision(), cands, {})
        cfg = yaml.safe_load(paths["litellm"].read_text())
        router = litellm.Router(model_list=cfg["model_list"], **cfg["router_settings"])

        answer = router.completion(
            model="route-classification",
            messages=[{"role": "user", "content": "ticket: refund please"}],
        )
        assert answer.choices[0].message.content == "Echo: ticket: refund please"
        assert [path for _, path, _ in local.request_log] == ["/v1/chat/completions"]
        assert prod.request_log == []

        answer = router.completion(
            model="route-summarization", messages=[{"role": "user", "content": "summarize this"}]
        )
        assert answer.choices[0].message.content == "Echo: summarize this"
        assert [(p, s) for _, p, s in prod.request_log] == [("/v1/chat/completions", 200)]

        answer = router.completion(
            model="route-code", messages=[{"role": "user", "content": "def f"}]
        )
        assert answer.choices[0].message.content == "Echo: def f"
        assert len(prod.request_log) == 2 and len(local.request_log) == 1
    assert os.environ["OPENAI_API_KEY"] not in paths["litellm"].read_text()


# ---------------------------------------------------------------- the flow, end to end


PER_TYPE = 40


def _warehouse(path: Path, log: Path, config: Path) -> dict[str, int]:
    """A real warehouse: a synthetic chat log ingested, a sample drawn, replays stored under the
    candidates' current fingerprints (the plan reads no other)."""
    from demo.logs import write_chat_log
    from pipeline.current import current_evidence
    from planner.settings import load_settings
    from warehouse.connection import open_warehouse
    from warehouse.ingest import ingest_paths
    from warehouse.replays import store_replay
    from warehouse.sampling import draw_sample, sampled_requests

    write_chat_log(log, 1500, seed=3)
    fingerprints = current_evidence(load_settings(config)).fingerprints
    con = open_warehouse(path)
    try:
        ingest_paths(con, [log])
        draw = draw_sample(con, per_type=PER_TYPE, seed=0)
        counts = {"sampled": 0}
        for row in sampled_requests(con, draw.sample_id):
            counts["sampled"] += 1
            answers = {
                "good-relay": row.response_text,  # as good as production everywhere
                "poor-relay": "I am not sure.",
                # the local model is as good as production, except on classification
                "phone": "no idea" if row.task_type == "classification" else row.response_text,
            }
            for cand, text in answers.items():
                store_replay(
                    con,
                    {
                        "replay_id": f"{cand}:{row.request_id}",
                        "request_id": row.request_id,
                        "candidate": cand,
                        "candidate_fingerprint": fingerprints[cand],
                        "output_text": text,
                        "ttft_ms": 80.0,
                        "latency_ms": 400.0 if cand != "phone" else 900.0,
                        "prompt_tokens": 40,
                        "completion_tokens": 20,
                        "cost_usd": 0.00002 if cand.endswith("relay") else 0.0,
                        "attempts": 1,
                    },
                )
    finally:
        con.close()
    return counts


def _config(tmp_path: Path, warehouse: Path, local_model: bool = True) -> Path:
    from planner.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-model") if local_model else tmp_path / "no-model"
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""
[warehouse]
path = "{warehouse}"

[baseline]
model = "gpt-4.1"
price_in = 2.0
price_out = 8.0

[[candidates]]
name = "phone"
kind = "local"
path = "{model}"

[[candidates]]
name = "good-relay"
kind = "relay"
base_url = "https://good.example/v1"
model = "good"
api_key_env = "GOOD_KEY"
price_in = 0.5
price_out = 1.0
rpm = 100000

[[candidates]]
name = "poor-relay"
kind = "relay"
base_url = "https://poor.example/v1"
model = "poor"
price_in = 0.1
price_out = 0.1

[objectives]
quality_floor = 0.8
p95_latency_ms = 2000
migration_cost_usd = 50

[replay]
per_type = {PER_TYPE}

[output]
dir = "{tmp_path / "out"}"
""",
        encoding="utf-8",
    )
    return config


def test_plan_flow_end_to_end(tmp_path: Path, prefect_harness: None) -> None:
    from flows.plan_flow import plan_flow

    warehouse = tmp_path / "planner.duckdb"
    config = _config(tmp_path, warehouse)
    counts = _warehouse(warehouse, tmp_path / "log.jsonl", config)
    result = plan_flow(config_path=str(config), out_dir=str(tmp_path / "run"))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "litellm.yaml",
        "metrics.json",
        "plan.html",
        "rollback.yaml",
        "routing.yaml",
    ]
    assert result["scoring"]["replays"] == 3 * counts["sampled"]
    assert result["scoring"]["scored"] == 3 * counts["sampled"]
    # The phone (a real model folder, tiny: it fits the device tier) is free and as good as
    # production except on classification, which goes to the good relay; the poor relay never
    # meets the floor. A type qualifies when, at one of its looks (10, 20, 40 up to its sample
    # size), all-passing replays reach floor x ceiling with alpha split over the 3 candidates and
    # the looks (and halved where production's ceiling was measured).
    metrics = json.loads((run / "metrics.json").read_text())
    n = {e["task_type"]: e["n"] for e in metrics["evidence"] if e["candidate"] == "good-relay"}
    assert sum(n.values()) == counts["sampled"]

    def qualifies(task: str) -> bool:
        ceiling = metrics["ceilings"][task]
        schedule = looks(n[task])
        alpha = 0.05 * (0.5 if ceiling["method"] == "measured" else 1.0) / 3 / len(schedule)
        return any(k >= 10 and cp_lower(k, k, alpha) >= 0.8 * ceiling["value"] for k in schedule)

    expected = {
        t: (
            "production" if not qualifies(t) else "good-relay" if t == "classification" else "phone"
        )
        for t in n
    }
    assert result["routes"] == expected
    assert sum(r == "phone" for r in expected.values()) >= 5
    assert sum(r == "production" for r in expected.values()) >= 1  # a type too small to tell
    phone_fit = next(e["fit"] for e in metrics["evidence"] if e["candidate"] == "phone")
    assert phone_fit["fits"] is True and 0 < phone_fit["needed_mb"] < 1000
    assert phone_fit["latency_factor"] > 0
    for route in metrics["routes"]:
        reasons = {r["candidate"]: r["reasons"] for r in route["rejected"]}
        assert any("below the floor" in why for why in reasons["poor-relay"])
        if route["route"] == "phone":
            assert route["fallbacks"] == ["good-relay", "production"]
            assert route["memory_guard_mb"] == pytest.approx(phone_fit["needed_mb"])
            assert route["latency_basis"].startswith("host x")  # the device tier's latency
        elif route["route"] == "good-relay":
            assert reasons["phone"][0].startswith("below the floor: pass rate 0/10")
            assert route["fallbacks"] == ["production"]
        else:
            assert route["reason"].startswith("not enough evidence for")
            assert any("not enough evidence" in why for why in reasons["good-relay"])
    # the projection is of the written config: later turns ride their conversation's route
    traffic = {t["task_type"]: t["requests"] for t in metrics["workload"]["types"]}
    moves = metrics["stickiness"]["moves"]

    def share(on: Any) -> float:
        own = sum(traffic[t] for t, r in expected.items() if on(r))
        gained = sum(m["count"] for m in moves if on(m["sticky_route"]) and not on(m["own_route"]))
        lost = sum(m["count"] for m in moves if on(m["own_route"]) and not on(m["sticky_route"]))
        return (own + gained - lost) / sum(traffic.values())

    assert moves  # the log has multi-turn conversations across types
    assert metrics["projection"]["migrated_share"] == pytest.approx(
        share(lambda r: r != "production")
    )
    assert metrics["projection"]["cloud_calls_removed"] == pytest.approx(
        share(lambda r: r == "phone")
    )
    assert metrics["projection"]["sticky"] is True
    assert metrics["projection"]["savings_usd"] > 0
    assert metrics["device"]["name"].startswith("Snapdragon 8 Gen 3")
    energy = [
        t["energy_wh_per_request"] for t in metrics["projection"]["types"] if t["kind"] == "local"
    ]
    assert energy and all(e > 0 for e in energy)
    assert "No LLM judge" in " ".join(metrics["notes"])
    routing = load_routing(run / "routing.yaml")
    assert {t: r["route"] for t, r in routing["routes"].items()} == expected
    assert routing["routes"]["summarization"]["memory_guard"]["min_free_mb"] > 0
    litellm = yaml.safe_load((run / "litellm.yaml").read_text())
    assert litellm["router_settings"]["model_group_alias"]["route-classification"] == "good-relay"
    html = (run / "plan.html").read_text()
    assert "good-relay" in html and "Rollback chain" in html and "mWh per request" in html
    # a second run scores nothing new
    again = plan_flow(config_path=str(config), out_dir=str(tmp_path / "run2"))
    assert again["scoring"]["scored"] == 0
    assert again["routes"] == result["routes"]


def test_plan_command(tmp_path: Path, prefect_harness: None) -> None:
    from typer.testing import CliRunner

    from flows.cli_common import new_app
    from flows.cli_plan import plan

    app = new_app("test")
    app.command("plan")(plan)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    warehouse = tmp_path / "planner.duckdb"
    config = _config(tmp_path, warehouse)
    _warehouse(warehouse, tmp_path / "log.jsonl", config)
    out = tmp_path / "cli-run"
    done = runner.invoke(app, ["plan", "-c", str(config), "--out", str(out), "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["plan"] == str(out / "plan.html") and (out / "plan.html").is_file()
    assert data["verdict"].startswith("Suitable")
    bad = runner.invoke(app, ["plan", "-c", str(config), "--judge", "nobody"])
    assert bad.exit_code == 2
    assert "no judge named 'nobody'" in bad.output
    own = runner.invoke(app, ["plan", "-c", str(config), "--judge", "good-relay"])
    assert own.exit_code == 2
    assert "'good-relay' is a judged candidate" in own.output
    missing = runner.invoke(app, ["plan", "-c", str(config), "-w", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 2 and "none.duckdb" in missing.output


def test_a_classifier_with_an_encoder_ships_its_tokenizer_in_the_routing_config() -> None:
    plain = routing_config(decision(), candidates())
    assert "tokenizer" not in plain["classifier"]
    paired = routing_config(decision(), candidates(), tokenizer_file="tokenizer.json")
    assert paired["classifier"]["tokenizer"] == "tokenizer.json"
    validate_routing(paired)
