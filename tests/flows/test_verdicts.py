"""The verdict end to end, as a new user would meet it: real chat-log files, a real DuckDB
warehouse, relays played by the project's model server on 127.0.0.1, the adaptive rounds and the
plan (:mod:`pipeline.replay`, :mod:`pipeline.plan`), with the cases issue #15 reproduced:

- a relay right on every one of 400 grade-school math requests does not take the type on at
  most 5 samples at floor 0.95, and does with up to 200 (deciding at 160); a cheaper relay right
  80% of the time never does, and its rounds stop early;
- a price edit in planner.toml changes the chosen relay, with no replay sent again;
- uncertain traffic stays on production unless a route qualifies on the uncertain stratum;
- a local model's latency is checked on the device tier (calibrated by a measured figure);
- a judge in `run` (the nightly flow) whose budget runs out mid-run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from demo.logs import task_examples
from pipeline.plan import make_plan
from pipeline.replay import RelayLane, make_replay, replay_relay
from planner.messages import message_text
from planner.models.server import ServerThread, create_app
from planner.replay.ratelimit import CostBudget
from planner.settings import PlannerSettings, load_settings
from warehouse import open_warehouse
from warehouse.ingest import ingest_paths

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "models" / "edge-small" / "int4"


def write_log(path: Path, examples: Sequence[tuple[list[dict[str, Any]], str, str]]) -> Path:
    """Chat-log lines of (messages, production's answer, task type)."""
    start = datetime(2026, 11, 2, tzinfo=UTC)
    with path.open("w", encoding="utf-8") as out:
        for i, (messages, answer, task) in enumerate(examples):
            record = {
                "id": f"req-{i:05d}",
                "timestamp": (start + timedelta(minutes=7 * i)).isoformat(),
                "request": {"model": "gpt-4.1", "messages": messages, "max_tokens": 128},
                "response": {
                    "model": "gpt-4.1",
                    "choices": [{"message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 60, "completion_tokens": 40},
                },
                "status_code": 200,
                "latency_ms": 900.0,
                "metadata": {"task_type": task},
            }
            out.write(json.dumps(record) + "\n")
    return path


def math_examples(n: int, seed: int = 1) -> list[tuple[list[dict[str, Any]], str, str]]:
    return [(m, a, "reasoning") for m, a in task_examples("reasoning", n, seed)]


class AnswerKeyEngine:
    """A relay that knows production's answers: right on every prompt, or wrong on the share
    ``wrong`` of them (chosen by a hash of the prompt: the same prompts every time)."""

    pieces_are_tokens = True

    def __init__(self, name: str, key: dict[str, str], wrong: float = 0.0) -> None:
        self.model_name = name
        self.key = key
        self.wrong = wrong

    def answer(self, messages: list[dict[str, Any]]) -> str:
        last = message_text(messages[-1].get("content"))
        digest = int(hashlib.md5(last.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if digest < self.wrong:
            return "I worked it out. The answer is -1."
        return self.key.get(last, "I do not know.")

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        yield self.answer(messages)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)


class DirectRelays:
    """Relay lanes run here, one after another (the flows run them as Prefect tasks)."""

    def __init__(self, settings: PlannerSettings, warehouse: str) -> None:
        self.settings, self.warehouse = settings, warehouse

    def submit(self, lane: RelayLane, budget: CostBudget) -> Any:
        try:
            return replay_relay(
                self.settings, self.warehouse, lane.candidate, lane.requests, False, budget, set()
            )
        except Exception as exc:  # the runner's contract: the outcome is the exception
            return exc

    def outcome(self, handle: Any) -> Any:
        return handle


class NoShards:
    """No local candidate in these tests."""

    capacity = 1
    concurrent_with_relays = False


def relay_block(name: str, url: str, model: str, price_in: float, price_out: float) -> str:
    return f"""
[[candidates]]
name = "{name}"
kind = "relay"
base_url = "{url}"
model = "{model}"
price_in = {price_in}
price_out = {price_out}
max_concurrency = 8
max_retries = 0
"""


def config(tmp: Path, body: str, *, per_type: int, floor: float = 0.95, extra: str = "") -> Path:
    path = tmp / "planner.toml"
    path.write_text(
        f"""
[warehouse]
path = {json.dumps(str(tmp / "planner.duckdb"))}

[baseline]
model = "gpt-4.1"
price_in = 2.0
price_out = 8.0

[objectives]
quality_floor = {floor}
p95_latency_ms = 5000

[replay]
per_type = {per_type}
uncertain = 0
max_new_tokens = 64

[output]
dir = {json.dumps(str(tmp / "out"))}
{extra}
{body}
""",
        encoding="utf-8",
    )
    return path


def ingest(tmp: Path, examples: Sequence[tuple[list[dict[str, Any]], str, str]]) -> str:
    warehouse = str(tmp / "planner.duckdb")
    con = open_warehouse(warehouse)
    try:
        ingest_paths(con, [write_log(tmp / "logs.jsonl", examples)])
    finally:
        con.close()
    return warehouse


def replay_and_plan(cfg: Path, run: str) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = load_settings(cfg)
    warehouse = str(settings.warehouse.path)
    replayed = make_replay(settings, DirectRelays(settings, warehouse), NoShards())  # type: ignore[arg-type]
    planned = make_plan(settings, run_dir=cfg.parent / run)
    metrics = json.loads(Path(planned["metrics"]).read_text("utf-8"))
    return replayed, metrics


def route_of(metrics: dict[str, Any], task: str) -> dict[str, Any]:
    return next(r for r in metrics["routes"] if r["task_type"] == task)


@pytest.fixture
def math_relays() -> Iterator[tuple[str, str, list[tuple[list[dict[str, Any]], str, str]]]]:
    examples = math_examples(400)
    key = {message_text(m[-1]["content"]): a for m, a, _ in examples}
    right = ServerThread(create_app(AnswerKeyEngine("always-right", key)))
    cheap = ServerThread(create_app(AnswerKeyEngine("eighty-percent", key, wrong=0.2)))
    with right as r, cheap as c:
        yield r.base_url, c.base_url, examples


def test_an_always_right_relay_needs_enough_samples_and_an_80_percent_one_never_migrates(
    tmp_path: Path, math_relays: tuple[str, str, Any]
) -> None:
    right_url, cheap_url, examples = math_relays
    body = relay_block("right", right_url, "always-right", 0.5, 1.0) + relay_block(
        "cheap", cheap_url, "eighty-percent", 0.1, 0.1
    )
    for tmp, per_type in ((tmp_path / "five", 5), (tmp_path / "cap200", 200)):
        tmp.mkdir()
        ingest(tmp, examples)
        replayed, metrics = replay_and_plan(config(tmp, body, per_type=per_type), "run")
        route = route_of(metrics, "reasoning")
        reasons = {r["candidate"]: r["reasons"] for r in route["rejected"]}
        evidence = {e["candidate"]: e for e in metrics["evidence"]}
        if per_type == 5:
            # 5 right answers out of 5: the exact bound (0.55 at most) is far from 0.95
            assert route["route"] == "production"
            assert route["reason"].startswith("not enough evidence for right")
            assert evidence["right"]["outcomes"] == {"pass": 5, "tie": 0, "fail": 0}
            assert evidence["right"]["quality_low"] < 0.6
            continue
        assert route["route"] == "right"
        assert route["samples_needed"] == 160  # decided at the look of 160, not the cap of 200
        assert route["verdict"]["state"] == "qualifies"
        assert reasons["cheap"][0].startswith("below the floor")
        # the rounds stopped each pair as soon as it was decided
        pairs = {p["candidate"]: p for p in replayed["pairs"]}
        assert pairs["right"]["samples"] == 160 and pairs["cheap"]["state"] == "below"
        assert [r["look"] for r in replayed["rounds"]] == [10, 20, 40, 80, 160]
        assert evidence["right"]["n"] == 160 and evidence["cheap"]["n"] <= 40
        assert "Clopper–Pearson one-sided" in evidence["right"]["bound_method"]


def test_a_price_edit_changes_the_chosen_relay(
    tmp_path: Path, math_relays: tuple[str, str, Any]
) -> None:
    """One cost model: tokens are stored, every replay is priced at plan time from planner.toml,
    and the ranking and the projection use that one price."""
    right_url, _, examples = math_relays
    second = ServerThread(create_app(AnswerKeyEngine("also-right", {
        message_text(m[-1]["content"]): a for m, a, _ in examples
    })))  # fmt: skip
    with second as other:
        warehouse = ingest(tmp_path, examples)
        body = relay_block("a", right_url, "always-right", 0.5, 1.0) + relay_block(
            "b", other.base_url, "also-right", 0.6, 1.2
        )
        _, first = replay_and_plan(config(tmp_path, body, per_type=200, floor=0.9), "run1")
        assert route_of(first, "reasoning")["route"] == "a"
        con = open_warehouse(warehouse, read_only=True)
        try:
            (sent,) = con.execute("SELECT count(*) FROM replays").fetchone()  # type: ignore[misc]
        finally:
            con.close()
        pricier = relay_block("a", right_url, "always-right", 2.0, 4.0) + relay_block(
            "b", other.base_url, "also-right", 0.6, 1.2
        )
        cfg = config(tmp_path, pricier, per_type=200, floor=0.9)
        planned = make_plan(load_settings(cfg), run_dir=tmp_path / "run2")
        second_metrics = json.loads(Path(planned["metrics"]).read_text("utf-8"))
    route = route_of(second_metrics, "reasoning")
    assert route["route"] == "b"
    b = next(
        e
        for e in second_metrics["evidence"]
        if e["candidate"] == "b" and e["task_type"] == "reasoning"
    )
    assert route["cost_per_1k_usd"] == pytest.approx(b["cost_per_1k_usd"])
    proj = next(t for t in second_metrics["projection"]["types"] if t["task_type"] == "reasoning")
    assert proj["cost_after_usd"] == pytest.approx(
        b["cost_per_1k_usd"] / 1000 * proj["monthly_requests"]
    )  # the projection prices the route as the ranking did
    con = open_warehouse(warehouse, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM replays").fetchone() == (sent,)  # nothing resent
    finally:
        con.close()


def test_uncertain_traffic_goes_to_production_unless_a_route_qualifies_on_its_stratum(
    tmp_path: Path, math_relays: tuple[str, str, Any]
) -> None:
    right_url, _, examples = math_relays
    for tmp, unsure in ((tmp_path / "few", 8), (tmp_path / "many", 100)):
        tmp.mkdir()
        warehouse = ingest(tmp, examples)
        con = open_warehouse(warehouse)
        try:  # the classifier was unsure of every other request
            con.execute(
                """
                INSERT INTO predictions
                SELECT request_id, 'reasoning', 0.4, (row_number() OVER (ORDER BY request_id)) % 2 = 0,
                       'test', 'run-1', now()::TIMESTAMP
                FROM requests
                """
            )
        finally:
            con.close()
        cfg = config(
            tmp,
            relay_block("right", right_url, "always-right", 0.5, 1.0),
            per_type=20,
            floor=0.95,
        )
        cfg.write_text(cfg.read_text().replace("uncertain = 0", f"uncertain = {unsure}"))
        _, metrics = replay_and_plan(cfg, "run")
        unc = next(
            e
            for e in metrics["evidence"]
            if e["task_type"] == "(uncertain)" and e["candidate"] == "right"
        )
        assert unc["n"] == unsure
        if unsure == 8:  # 8 right out of 8 cannot show 95%: production takes them
            assert metrics["uncertain_route"] == "production"
            assert metrics["uncertain"]["reason"].startswith("not enough evidence")
        else:
            assert metrics["uncertain_route"] == "right"
        # the 20 per-type requests never decide the uncertain route
        assert route_of(metrics, "reasoning")["route"] == "production"


def test_a_local_model_is_held_to_the_slo_on_the_device_tier(tmp_path: Path) -> None:
    """The same host measurements pass or fail the SLO by the device's measured decode speed."""
    examples = [(m, a, "classification") for m, a in task_examples("classification", 300, 2)]
    warehouse = ingest(tmp_path, examples)

    def configured(speed: float) -> Path:
        cfg = config(
            tmp_path,
            f"""
[[candidates]]
name = "edge"
kind = "local"
path = {json.dumps(str(LOCAL))}
device_tokens_per_s = {speed}
""",
            per_type=200,
            floor=0.9,
        )
        cfg.write_text(cfg.read_text().replace("p95_latency_ms = 5000", "p95_latency_ms = 2000"))
        return cfg

    from pipeline.current import current_evidence

    edge_fp = current_evidence(load_settings(configured(4.0))).fingerprints["edge"]
    con = open_warehouse(warehouse)
    try:
        from warehouse.replays import store_replays
        from warehouse.sampling import draw_sample, sampled_requests

        draw = draw_sample(con, per_type=200, seed=0)
        store_replays(
            con,
            [
                {
                    "replay_id": f"edge:{row.request_id}",
                    "request_id": row.request_id,
                    "candidate": "edge",
                    "candidate_fingerprint": edge_fp,
                    "output_text": row.response_text,
                    "ttft_ms": 50.0,
                    "latency_ms": 400.0,
                    "prompt_tokens": 60,
                    "completion_tokens": 4,
                    "tokens_per_s": 40.0,
                    "attempts": 1,
                }
                for row in sampled_requests(con, draw.sample_id)
            ],
        )
    finally:
        con.close()
    outcomes = {}
    for label, speed in (("slow", 4.0), ("fast", 400.0)):
        cfg = configured(speed)
        planned = make_plan(load_settings(cfg), run_dir=tmp_path / label)
        metrics = json.loads(Path(planned["metrics"]).read_text("utf-8"))
        outcomes[label] = metrics
    edge = {
        k: next(e for e in m["evidence"] if e["candidate"] == "edge") for k, m in outcomes.items()
    }
    # host: 400 ms for every request; on the device 40 tok/s / 4 tok/s = 10x slower
    assert edge["slow"]["host_latency_p95_ms"] == pytest.approx(400.0)
    assert edge["slow"]["latency_p95_ms"] == pytest.approx(4000.0)
    assert edge["fast"]["latency_p95_ms"] == pytest.approx(40.0)
    assert "measured on the device" in edge["slow"]["latency_basis"]
    slow = route_of(outcomes["slow"], "classification")
    assert slow["route"] == "production"
    assert slow["rejected"][0]["reasons"] == [
        "p95 latency 4000 ms on the device over the SLO 2000 ms"
    ]
    assert route_of(outcomes["fast"], "classification")["route"] == "edge"


JUDGE_KEY_ENV = "VERDICT_TEST_RELAY_KEY"


@pytest.mark.usefixtures("prefect_harness")
def test_a_judge_in_run_whose_budget_runs_out_mid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` scores open-ended types with the configured [judge] (never a candidate), through
    the relay client with its own cost cap. When the cap is reached mid-run the run completes;
    the replays the judge did not reach stay unscored (no stand-in score), the page says so, and
    the next run judges more of them (its cache answering what was asked before)."""
    from demo.judge import RuleJudgeEngine
    from demo.logs import write_chat_log
    from flows.nightly import nightly_flow
    from planner.models.server import EchoEngine, FaultConfig

    monkeypatch.setenv(JUDGE_KEY_ENV, "k-123")
    logs = tmp_path / "logs" / "prod.jsonl"
    logs.parent.mkdir()
    write_chat_log(logs, 300, seed=3)
    relay = ServerThread(create_app(EchoEngine("echo"), FaultConfig(), api_key="k-123"))
    judge = ServerThread(create_app(RuleJudgeEngine("rule-judge")))
    with relay as r, judge as j:
        cfg = tmp_path / "planner.toml"
        cfg.write_text(
            f"""
[warehouse]
path = {json.dumps(str(tmp_path / "planner.duckdb"))}

[objectives]
quality_floor = 0.9
p95_latency_ms = 4000

[replay]
per_type = 6
uncertain = 0
max_new_tokens = 16

[output]
dir = {json.dumps(str(tmp_path / "out"))}

[run]
logs = [{json.dumps(str(logs))}]

[judge]
name = "rule-judge"
base_url = "{j.base_url}"
model = "rule-judge"
price_in = 100.0
price_out = 100.0
max_cost_usd = 0.15
max_concurrency = 4

[[candidates]]
name = "relay"
kind = "relay"
base_url = "{r.base_url}"
model = "echo"
api_key_env = "{JUDGE_KEY_ENV}"
price_in = 0.1
price_out = 0.2
max_retries = 0
""",
            encoding="utf-8",
        )
        first = nightly_flow(config_path=str(cfg), return_state=True)
        assert first.is_completed()
        result = first.result()
        metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text(encoding="utf-8"))
        asked_first = sum(1 for _, path, status in j.request_log if status == 200)
        second = nightly_flow(config_path=str(cfg), return_state=True)
        assert second.is_completed()
        asked_second = sum(1 for _, path, status in j.request_log if status == 200)
    assert metrics["judge"] == "rule-judge"
    notes = " ".join(metrics["notes"])
    assert "The judge stopped" in notes and "await its verdict" in notes
    # the cap is the whole run's: the rounds and the plan's scoring pass share it
    spent = re.search(r"The judge's calls cost \$([0-9.]+) this run", notes)
    assert spent is not None and 0 < float(spent.group(1)) <= 0.15 + 1e-9
    assert "judge rule-judge on 127.0.0.1 (this machine)" in metrics["labels"]
    judged_types = {"chatbot", "brainstorming", "text_generation", "open_qa"}
    judged = [
        e
        for e in metrics["evidence"]
        if e["task_type"] in judged_types and e["candidate"] == "relay"
    ]
    assert judged and sum(e["n_unscored"] for e in judged) > 0  # awaiting the judge
    assert all(
        s.startswith("judge:rule-judge") for e in judged for s in e["scorers"]
    )  # judged or nothing: no similarity stand-in
    assert {s["task_type"] for s in metrics["judge_stats"]} <= judged_types
    assert metrics["ceilings"]["chatbot"]["method"] == "judge symmetry"
    con = open_warehouse(str(tmp_path / "planner.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT count(*) FROM scores WHERE metric = 'quality' AND scorer LIKE 'judge:%'"
        ).fetchone()
    finally:
        con.close()
    assert rows is not None and rows[0] > 0
    assert 0 < asked_first < asked_second  # the second run asked for what the first could not


def test_a_judge_that_is_a_judged_candidate_is_refused(tmp_path: Path) -> None:
    from planner.errors import ConfigError

    same_endpoint = config(
        tmp_path,
        relay_block("relay", "http://127.0.0.1:9/v1", "m", 0.1, 0.1)
        + '\n[judge]\nbase_url = "http://127.0.0.1:9/v1/"\nmodel = "m"\n',
        per_type=5,
    )
    with pytest.raises(ConfigError, match="is also the judged candidate 'relay'"):
        load_settings(same_endpoint)
    same_name = config(
        tmp_path,
        relay_block("judge", "http://127.0.0.1:9/v1", "m", 0.1, 0.1)
        + '\n[judge]\nbase_url = "http://127.0.0.1:8/v1"\nmodel = "other"\n',
        per_type=5,
    )
    with pytest.raises(ConfigError, match="must not grade its own answers"):
        load_settings(same_name)
    half = config(tmp_path, '\n[judge]\nbase_url = "http://127.0.0.1:8/v1"\n', per_type=5)
    with pytest.raises(ConfigError, match="judge"):
        load_settings(half)


def test_production_re_asked_measures_its_own_ceiling(tmp_path: Path) -> None:
    """[baseline] base_url + reask_per_type: a few sampled requests are asked of production
    again (within its budget, once); its self-agreement is the ceiling the floor is read
    against, and the page shows it where the logs held no exact repeats."""
    examples = [(m, a, "summarization") for m, a in task_examples("summarization", 60, 4)]
    key = {message_text(m[-1]["content"]): a for m, a, _ in examples}
    again = AnswerKeyEngine("gpt-4.1", key, wrong=0.4)  # 40%: a different answer
    with ServerThread(create_app(again)) as prod:
        warehouse = ingest(tmp_path, examples)
        cfg = config(
            tmp_path,
            relay_block("relay", prod.base_url, "gpt-4.1-relay", 0.1, 0.1),
            per_type=40,
            floor=0.9,
        )
        cfg.write_text(
            cfg.read_text().replace(
                "price_out = 8.0\n",
                f'price_out = 8.0\nbase_url = "{prod.base_url}"\nreask_per_type = 20\n'
                "reask_max_cost_usd = 0.5\n",
            )
        )
        settings = load_settings(cfg)
        make_replay(settings, DirectRelays(settings, warehouse), NoShards(), adaptive=False)
        # the relay's model name differs: its answers 404; only the re-asks matter here
        first = make_plan(settings, run_dir=tmp_path / "run1")
        asked = sum(1 for _, path, status in prod.request_log if status == 200)
        make_plan(settings, run_dir=tmp_path / "run2")
        asked_again = sum(1 for _, path, status in prod.request_log if status == 200)
    metrics = json.loads(Path(first["metrics"]).read_text("utf-8"))
    ceiling = metrics["ceilings"]["summarization"]
    assert ceiling["method"] == "measured" and ceiling["sources"] == {"re-asked": 20}
    assert 0.3 < ceiling["rate"] < 0.9  # production does not always agree with itself
    assert ceiling["value"] == pytest.approx(ceiling["upper"]) and ceiling["value"] < 1.0
    assert asked == asked_again  # asked once: the second plan reuses the stored answers
    page = Path(first["plan"]).read_text("utf-8")
    assert "production-vs-production pairs pass (re-asked 20)" in page
