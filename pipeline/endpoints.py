"""Every endpoint outside the planner that sees production text, with its data policy.

Relay candidates, the judge and the annotator are OpenAI-compatible endpoints. One on another
machine receives production prompts only as its configuration says (``send_production_data``, or
``redact`` through :class:`planner.replay.privacy.Redactor` with the warehouse's key patterns and
``[privacy] names``); a run refuses to start with one that says neither. The plan lists which
endpoint saw what.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from planner.errors import ConfigError
from planner.replay.privacy import Policy, Redactor, check_endpoint
from planner.settings import CandidateSettings, PlannerSettings
from warehouse import mask_text


@dataclass(frozen=True)
class Endpoint:
    """One endpoint a run sends production text to, as the plan reports it."""

    name: str
    role: str  # "candidate", "annotator", "judge"
    host: str
    policy: Policy | None  # None: no data policy (only listed, never sent to by a strict check)

    def line(self) -> str:
        seen = {
            "local": "on this machine",
            "full": "prompts as logged",
            "redacted": "prompts redacted",
            None: "no data policy: may not receive prompts",
        }[self.policy]
        return f"{self.name} ({self.role}, {self.host}): {seen}"


def candidate_policy(c: CandidateSettings) -> Policy:
    """The candidate's policy, or one ConfigError line naming what to set."""
    return check_endpoint(
        f"candidate {c.name!r}",
        c.name,
        c.base_url,
        send_production_data=c.send_production_data,
        redact=c.redact,
        has_key=bool(c.api_key_env),
    )


def redactor_for(c: CandidateSettings, names: Sequence[str]) -> Redactor | None:
    """The redactor a relay candidate's requests go through (None: sent as logged)."""
    if c.kind != "relay" or candidate_policy(c) != "redacted":
        return None
    return Redactor(names, mask_keys=mask_text)


def judge_policy(settings: PlannerSettings) -> Policy:
    """The judge's policy, or one ConfigError line naming what to set."""
    j = settings.judge
    return check_endpoint(
        "[judge]",
        j.name,
        j.base_url,
        send_production_data=j.send_production_data,
        redact=j.redact,
        has_key=bool(j.api_key_env),
    )


def judge_redactor(settings: PlannerSettings) -> Redactor | None:
    """The redactor the judge's requests go through (None: sent as logged)."""
    if not settings.judge.enabled or judge_policy(settings) != "redacted":
        return None
    return Redactor(settings.privacy.names, mask_keys=mask_text)


def check_endpoints(
    settings: PlannerSettings, names: Sequence[str] | None = None, *, strict: bool = True
) -> list[Endpoint]:
    """Every relay the run would use (``names``: only those candidates; None: all of them), and
    the annotator; ``strict`` raises :class:`planner.errors.ConfigError` for the first that may
    not see production text (else it is listed with no policy)."""
    chosen = [settings.candidate(n) for n in names] if names is not None else settings.candidates
    roles = {c.name: "candidate" for c in chosen}
    endpoints = list(chosen)
    if settings.classifier.annotator:
        annotator = settings.candidate(settings.classifier.annotator)
        if annotator.name in roles:
            roles[annotator.name] = "candidate, annotator"
        else:
            endpoints.append(annotator)
            roles[annotator.name] = "annotator"

    def policy_of(check: Callable[[], Policy]) -> Policy | None:
        try:
            return check()
        except ConfigError:
            if strict:
                raise
            return None

    out: list[Endpoint] = []
    if settings.judge.enabled:
        host = urlsplit(settings.judge.base_url or "").hostname or ""
        out.append(
            Endpoint(settings.judge.name, "judge", host, policy_of(lambda: judge_policy(settings)))
        )
    for c in endpoints:
        if c.kind != "relay":
            continue
        host = urlsplit(c.base_url or "").hostname or ""
        out.append(Endpoint(c.name, roles[c.name], host, policy_of(partial(candidate_policy, c))))
    return out
