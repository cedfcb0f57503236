"""The demo's set-up: its models, its configuration and the "relay" it plays against.

The demo runs the whole job offline on generated logs (:mod:`demo`). Its local candidates are the
committed demo models under ``models/``; its relay is the project's own OpenAI-compatible model
server on 127.0.0.1 (a bigger demo model behind a key, with injected 429s and 503s so retries
show). The configuration written names the key's environment variable, never the key.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parent.parent / "models"
RELAY_KEY_ENV = "DEMO_RELAY_API_KEY"


def demo_models(root: Path = MODELS) -> list[Path]:
    """Every onnxruntime-genai folder under ``models/`` (committed, built by `make demo-models`)."""
    return sorted(p.parent for p in root.glob("*/*/genai_config.json"))


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_demo_config(
    workdir: Path,
    local: list[Path],
    relay_url: str | None,
    relay_model: str,
    judge_url: str | None = None,
    judge_model: str = "demo-rule-judge",
) -> Path:
    """The demo's planner.toml: the edge models as local candidates, the relay as a cheap cloud,
    the rule-based judge (:mod:`demo.judge`) for open-ended types, the data marked synthetic."""
    lines = [
        "# Written by `migration-planner demo`.",
        "[warehouse]",
        f"path = {_toml_str(str(workdir / 'planner.duckdb'))}",
        "",
        "[baseline]",
        'model = "gpt-4.1"',
        "",
        "[objectives]",
        "quality_floor = 0.9",
        "p95_latency_ms = 4000",
        'device = "snapdragon-8-gen-3"',
        "",
        "[replay]",
        "per_type = 80                   # the cap: rounds of 10, 20, 40, 80 stop once decided",
        "uncertain = 8",
        "seed = 0",
        "max_cost_usd = 1.0",
        "max_new_tokens = 64",
        "",
        "[verdict]",
        "confidence = 0.95",
        "first_round = 10",
        "",
        "[output]",
        f"dir = {_toml_str(str(workdir / 'out'))}",
        "synthetic_data = true",
    ]
    if judge_url:
        lines += [
            "",
            "[judge]                         # a rule behind the model server, not an LLM",
            f"name = {_toml_str(judge_model)}",
            f"base_url = {_toml_str(judge_url)}",
            f"model = {_toml_str(judge_model)}",
            "max_concurrency = 4",
            "max_cost_usd = 0.5",
        ]
    for folder in local:
        lines += [
            "",
            "[[candidates]]",
            f"name = {_toml_str(folder.parent.name + '-' + folder.name)}",
            'kind = "local"',
            f"path = {_toml_str(str(folder))}",
        ]
    if relay_url:
        lines += [
            "",
            "[[candidates]]",
            'name = "relay-demo"',
            'kind = "relay"',
            f"base_url = {_toml_str(relay_url)}",
            f"model = {_toml_str(relay_model)}",
            f'api_key_env = "{RELAY_KEY_ENV}"',
            "price_in = 0.28",
            "price_out = 0.42",
            "rpm = 600",
            "max_concurrency = 4",
            "timeout_s = 30",
            "max_retries = 5",
        ]
    path = workdir / "planner.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextmanager
def demo_judge() -> Iterator[tuple[str, str]]:
    """The demo's judge on 127.0.0.1: the project's model server over the rule-based engine of
    :mod:`demo.judge` (no judged candidate; the page labels it)."""
    from demo.judge import RuleJudgeEngine
    from planner.models.server import ServerThread, create_app

    engine = RuleJudgeEngine()
    with ServerThread(create_app(engine)) as server:
        yield server.base_url, engine.model_name


@contextmanager
def demo_relay(model_dir: Path | None) -> Iterator[tuple[str, str]]:
    """The project's model server on 127.0.0.1 playing a relay: a bigger demo model (or the echo
    engine when no model is built), a key it requires, and some 429s and 503s."""
    from planner.models.server import EchoEngine, FaultConfig, LocalEngine, ServerThread, create_app

    key = secrets.token_urlsafe(16)
    os.environ[RELAY_KEY_ENV] = key  # the config names the variable; the key is never written
    engine: Any = LocalEngine(model_dir, model_name="relay-demo") if model_dir else EchoEngine()
    faults = FaultConfig(rate_429=0.08, retry_after_s=0.2, rate_503=0.05, seed=7)
    try:
        with ServerThread(create_app(engine, faults, api_key=key)) as server:
            yield server.base_url, engine.model_name
    finally:
        os.environ.pop(RELAY_KEY_ENV, None)
