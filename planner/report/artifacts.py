"""The files a gateway loads and a person keeps: routing, LiteLLM, rollback configs and metrics.

All three configs describe the same routes. ``routing.yaml`` is this project's own schema
(``version: 1``, see docs/routing-schema.md); ``litellm.yaml`` is a LiteLLM proxy config (one
model group per endpoint, a ``route-<task type>`` alias per task type, fallbacks along the chain);
``rollback.yaml`` lists each route's chain with its rate limits, the triggers that move traffic
one hop back, and a complete routing config that sends everything to production in one step.
No API key is ever written: endpoints name the environment variable that holds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from planner.errors import PlanError
from planner.evaluate.conversations import Stickiness
from planner.evaluate.decision import Decision, Route
from planner.evaluate.evidence import PRODUCTION, Candidate

ROUTING_VERSION = 1
UNCERTAIN_GROUP = "route-uncertain"
DEFAULT_GROUP = "route-default"


@dataclass(frozen=True)
class Gateway:
    """How the gateway talks to endpoints; where the local model server listens."""

    num_retries: int = 2
    timeout_s: float = 60.0
    allowed_fails: int = 3
    cooldown_time_s: float = 30.0
    local_api_base: str = "http://127.0.0.1:8000/v1"
    local_api_key_env: str = "LOCAL_MODEL_API_KEY"


@dataclass(frozen=True)
class Triggers:
    """What moves traffic one hop back along a route's chain (evaluated over a sliding window)."""

    error_rate: float = 0.05
    p95_latency_ms: float = 2000.0
    quality_drop: float = 0.03  # below the planned mean, as measured by the nightly replay run
    window_minutes: int = 15


def route_group(task_type: str) -> str:
    """The model name a client sends for a task type (a LiteLLM alias, a routing.yaml key)."""
    return f"route-{task_type}"


def _endpoint(cand: Candidate, gateway: Gateway) -> dict[str, Any]:
    local = cand.kind == "local"
    return {
        "kind": cand.kind,
        "base_url": cand.base_url or (gateway.local_api_base if local else None),
        "model": cand.model or cand.name,
        "api_key_env": cand.api_key_env or (gateway.local_api_key_env if local else None),
        "rpm": cand.rpm,
        "tpm": cand.tpm,
        "timeout_s": cand.timeout_s,
        "price_in_per_1m": cand.price_in,
        "price_out_per_1m": cand.price_out,
    }


def _used_endpoints(decision: Decision) -> list[str]:
    names: list[str] = []
    for route in decision.routes:
        for hop in (route.route, *route.fallbacks):
            if hop not in names:
                names.append(hop)
    for hop in (decision.uncertain_route, *decision.uncertain_fallbacks, PRODUCTION):
        if hop not in names:
            names.append(hop)
    return names


def _candidate(name: str, candidates: Mapping[str, Candidate]) -> Candidate:
    try:
        return candidates[name]
    except KeyError as exc:
        known = ", ".join(sorted(candidates)) or "none"
        raise PlanError(f"route {name!r} has no endpoint settings (known: {known})") from exc


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _route_entry(route: Route) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "route": route.route,
        "fallbacks": list(route.fallbacks),
        "evidence": {
            "quality_mean": _round(route.quality_mean),
            "quality_low": _round(route.quality_low),
            "latency_p95_ms": _round(route.latency_p95_ms, 1),
        },
    }
    if route.memory_guard_mb is not None:
        entry["memory_guard"] = {"min_free_mb": round(route.memory_guard_mb)}
    return entry


def routing_config(
    decision: Decision,
    candidates: Mapping[str, Candidate],
    *,
    classifier_file: str = "classifier.onnx",
    confidence_threshold: float = 0.5,
    stickiness: Stickiness | None = None,
    gateway: Gateway | None = None,
    run_id: str | None = None,
    tokenizer_file: str | None = None,
) -> dict[str, Any]:
    """This project's routing config (schema version 1). ``tokenizer_file``: the sentence
    encoder's tokenizer a classifier with an encoder needs beside its ONNX file."""
    gw = gateway or Gateway()
    doc: dict[str, Any] = {"version": ROUTING_VERSION}
    if run_id:
        doc["run_id"] = run_id
    doc["classifier"] = {
        "file": classifier_file,
        **({"tokenizer": tokenizer_file} if tokenizer_file else {}),
        "confidence_threshold": confidence_threshold,
        "uncertain_route": decision.uncertain_route,
        "uncertain_fallbacks": list(decision.uncertain_fallbacks),
    }
    doc["default_route"] = PRODUCTION
    doc["stickiness"] = {
        "enabled": True,
        "key": "conversation_id",
        "rule": "first_turn",
        "rerouted_share": _round(stickiness.rerouted_share) if stickiness else None,
    }
    doc["endpoints"] = {
        n: _endpoint(_candidate(n, candidates), gw) for n in _used_endpoints(decision)
    }
    doc["routes"] = {r.task_type: _route_entry(r) for r in decision.routes}
    validate_routing(doc)
    return doc


def production_only_routing(routing: Mapping[str, Any]) -> dict[str, Any]:
    """The same config with every task type, uncertain requests included, on production."""
    doc = json.loads(json.dumps(routing))
    doc["classifier"]["uncertain_route"] = PRODUCTION
    doc["classifier"]["uncertain_fallbacks"] = []
    doc["endpoints"] = {PRODUCTION: doc["endpoints"][PRODUCTION]}
    doc["routes"] = {t: {"route": PRODUCTION, "fallbacks": []} for t in doc["routes"]}
    validate_routing(doc)
    return doc


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise PlanError(f"routing config: {where}: {what}")


def validate_routing(doc: Any) -> None:
    """Check a routing config against schema version 1; one :class:`PlanError` names the field."""
    _require(isinstance(doc, dict), "(top level)", "must be a mapping")
    _require(
        doc.get("version") == ROUTING_VERSION,
        "version",
        f"must be {ROUTING_VERSION}, got {doc.get('version')!r}",
    )
    endpoints = doc.get("endpoints")
    _require(
        isinstance(endpoints, dict) and bool(endpoints), "endpoints", "must be a non-empty mapping"
    )
    for name, ep in endpoints.items():
        _require(isinstance(ep, dict), f"endpoints.{name}", "must be a mapping")
        _require(
            ep.get("kind") in ("local", "relay", "production"),
            f"endpoints.{name}.kind",
            "must be local, relay or production",
        )
        for key in ("rpm", "tpm"):
            value = ep.get(key)
            _require(
                value is None or (isinstance(value, int) and value > 0),
                f"endpoints.{name}.{key}",
                "must be a positive integer or null",
            )
        _require(
            "api_key" not in ep,
            f"endpoints.{name}",
            "must not hold an api_key (name the variable in api_key_env)",
        )
    cls = doc.get("classifier")
    _require(isinstance(cls, dict), "classifier", "must be a mapping")
    threshold = cls.get("confidence_threshold")
    _require(
        isinstance(threshold, int | float) and 0 <= threshold <= 1,
        "classifier.confidence_threshold",
        "must be within [0, 1]",
    )
    _require(
        cls.get("uncertain_route") in endpoints,
        "classifier.uncertain_route",
        "must name an endpoint",
    )
    _require(doc.get("default_route") in endpoints, "default_route", "must name an endpoint")
    sticky = doc.get("stickiness")
    _require(
        isinstance(sticky, dict) and isinstance(sticky.get("enabled"), bool),
        "stickiness.enabled",
        "must be true or false",
    )
    routes = doc.get("routes")
    _require(isinstance(routes, dict), "routes", "must be a mapping of task type -> route")
    for task_type, entry in routes.items():
        where = f"routes.{task_type}"
        _require(isinstance(entry, dict), where, "must be a mapping")
        _require(
            entry.get("route") in endpoints,
            f"{where}.route",
            f"{entry.get('route')!r} is not an endpoint",
        )
        fallbacks = entry.get("fallbacks", [])
        _require(isinstance(fallbacks, list), f"{where}.fallbacks", "must be a list")
        for hop in fallbacks:
            _require(hop in endpoints, f"{where}.fallbacks", f"{hop!r} is not an endpoint")
        _require(
            entry["route"] not in fallbacks,
            f"{where}.fallbacks",
            "must not repeat the route itself",
        )
        guard = entry.get("memory_guard")
        if guard is not None:
            _require(
                endpoints[entry["route"]]["kind"] == "local",
                f"{where}.memory_guard",
                "only a local route has a memory guard",
            )
            _require(
                isinstance(guard.get("min_free_mb"), int | float) and guard["min_free_mb"] > 0,
                f"{where}.memory_guard.min_free_mb",
                "must be a positive number",
            )


def load_routing(path: Path) -> dict[str, Any]:
    """Read and validate a routing.yaml."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot read routing config: {exc}") from exc
    try:
        validate_routing(doc)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from exc
    return doc


# ---------------------------------------------------------------- LiteLLM


def _litellm_params(cand: Candidate, gateway: Gateway) -> dict[str, Any]:
    ep = _endpoint(cand, gateway)
    params: dict[str, Any] = {"model": f"openai/{ep['model']}"}
    if ep["base_url"]:
        params["api_base"] = ep["base_url"]
    if ep["api_key_env"]:
        params["api_key"] = f"os.environ/{ep['api_key_env']}"
    if cand.rpm is not None:
        params["rpm"] = cand.rpm
    if cand.tpm is not None:
        params["tpm"] = cand.tpm
    params["timeout"] = cand.timeout_s
    params["input_cost_per_token"] = cand.price_in / 1e6
    params["output_cost_per_token"] = cand.price_out / 1e6
    return params


def litellm_config(
    decision: Decision, candidates: Mapping[str, Candidate], gateway: Gateway | None = None
) -> dict[str, Any]:
    """A LiteLLM proxy config: a group per endpoint, a route alias per task type, fallbacks."""
    gw = gateway or Gateway()
    model_list = [
        {"model_name": name, "litellm_params": _litellm_params(_candidate(name, candidates), gw)}
        for name in _used_endpoints(decision)
    ]
    alias: dict[str, str] = {}
    fallbacks: list[dict[str, list[str]]] = []
    for route in decision.routes:
        alias[route_group(route.task_type)] = route.route
        if route.fallbacks:
            fallbacks.append({route_group(route.task_type): list(route.fallbacks)})
    alias[UNCERTAIN_GROUP] = decision.uncertain_route
    if decision.uncertain_fallbacks:
        fallbacks.append({UNCERTAIN_GROUP: list(decision.uncertain_fallbacks)})
    alias[DEFAULT_GROUP] = PRODUCTION
    return {
        "model_list": model_list,
        "router_settings": {
            "model_group_alias": alias,
            "fallbacks": fallbacks,
            "num_retries": gw.num_retries,
            "timeout": gw.timeout_s,
            "allowed_fails": gw.allowed_fails,
            "cooldown_time": gw.cooldown_time_s,
        },
    }


# ---------------------------------------------------------------- rollback


def _hop(
    name: str, candidates: Mapping[str, Candidate], route: Route | None, gateway: Gateway
) -> dict[str, Any]:
    cand = _candidate(name, candidates)
    hop: dict[str, Any] = {
        "hop": name,
        "kind": cand.kind,
        "rpm": cand.rpm,
        "tpm": cand.tpm,
        "timeout_s": cand.timeout_s,
    }
    if route is not None and name == route.route and route.memory_guard_mb is not None:
        hop["memory_guard_mb"] = round(route.memory_guard_mb)
    return hop


def rollback_config(
    decision: Decision,
    candidates: Mapping[str, Candidate],
    routing: Mapping[str, Any],
    *,
    triggers: Triggers | None = None,
    gateway: Gateway | None = None,
) -> dict[str, Any]:
    """Per route: the ordered chain with rate limits and the triggers that move traffic back."""
    trig = triggers or Triggers(p95_latency_ms=decision.objectives.p95_latency_ms)
    gw = gateway or Gateway()
    floor = decision.objectives.quality_floor
    routes: dict[str, Any] = {}
    for route in decision.routes:
        chain = [_hop(h, candidates, route, gw) for h in (route.route, *route.fallbacks)]
        entry: dict[str, Any] = {"chain": chain}
        if route.route != PRODUCTION:
            planned = route.quality_mean if route.quality_mean is not None else floor
            entry["triggers"] = {
                "error_rate": {"above": trig.error_rate, "window_minutes": trig.window_minutes},
                "p95_latency_ms": {
                    "above": trig.p95_latency_ms,
                    "window_minutes": trig.window_minutes,
                },
                "quality": {
                    "below": round(max(0.0, min(floor, planned - trig.quality_drop)), 4),
                    "lower_bound_below": floor,
                    "measured_by": "nightly replay run against production answers",
                },
            }
            entry["on_trigger"] = "move this task type's traffic to the next hop in the chain"
        routes[route.task_type] = entry
    return {
        "version": ROUTING_VERSION,
        "routes": routes,
        "uncertain": {
            "chain": [
                _hop(h, candidates, None, gw)
                for h in (decision.uncertain_route, *decision.uncertain_fallbacks)
            ]
        },
        "all_to_production": {
            "description": "One step back: load this routing config instead of routing.yaml "
            "to send all traffic to production.",
            "routing": production_only_routing(routing),
        },
    }


# ---------------------------------------------------------------- writing


def _dump_yaml(path: Path, data: Mapping[str, Any], header: str) -> None:
    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, default_flow_style=False)
    path.write_text(f"# {header}\n{text}", encoding="utf-8")


def write_artifacts(
    folder: Path,
    decision: Decision,
    candidates: Mapping[str, Candidate],
    metrics: Mapping[str, Any],
    *,
    classifier_file: str = "classifier.onnx",
    confidence_threshold: float = 0.5,
    stickiness: Stickiness | None = None,
    triggers: Triggers | None = None,
    gateway: Gateway | None = None,
    run_id: str | None = None,
    tokenizer_file: str | None = None,
) -> dict[str, Path]:
    """Write routing.yaml, litellm.yaml, rollback.yaml and metrics.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    routing = routing_config(
        decision,
        candidates,
        classifier_file=classifier_file,
        confidence_threshold=confidence_threshold,
        stickiness=stickiness,
        gateway=gateway,
        run_id=run_id,
        tokenizer_file=tokenizer_file,
    )
    paths = {
        "routing": folder / "routing.yaml",
        "litellm": folder / "litellm.yaml",
        "rollback": folder / "rollback.yaml",
        "metrics": folder / "metrics.json",
    }
    _dump_yaml(
        paths["routing"], routing, "Routing config, schema version 1 (docs/routing-schema.md)."
    )
    _dump_yaml(
        paths["litellm"],
        litellm_config(decision, candidates, gateway),
        "LiteLLM proxy config: `litellm --config litellm.yaml`.",
    )
    _dump_yaml(
        paths["rollback"],
        rollback_config(decision, candidates, routing, triggers=triggers, gateway=gateway),
        "Rollback chain: per route, the hops in order and what moves traffic back.",
    )
    paths["metrics"].write_text(
        json.dumps(metrics, indent=2, sort_keys=False, default=str, allow_nan=False),
        encoding="utf-8",
    )
    return paths
