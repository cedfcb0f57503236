"""Production text leaves the machine only as configured: the redactor's placeholders, the
endpoint policy, keys never over plain http to another machine — checked on a real server's side."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.endpoints import check_endpoints, redactor_for
from pipeline.replay import relay_backend
from planner.errors import ConfigError
from planner.evaluate.scoring import similarity
from planner.models.server import EchoEngine, ServerThread, create_app
from planner.replay.privacy import Redactor, endpoint_policy
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.relay import RelayBackend
from planner.settings import load_settings
from warehouse import mask_text

EMAIL = "jane.doe@acme-corp.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"  # Luhn-valid test number
KEY = "sk-proj-" + "Zx9" * 10
PROMPT = (
    f"Customer Jane Doe ({EMAIL}, phone {PHONE}) paid with {CARD}. Her key {KEY} leaked. "
    f"Write to {EMAIL} and tell Jane the refund is on its way."
)


class Recording(EchoEngine):
    """Echoes the last user message and keeps every message list it was sent."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.seen: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        with self.lock:
            self.seen.append(messages)
        yield from super().complete(messages, max_tokens, temperature)


def test_placeholders_are_typed_and_consistent_within_a_request() -> None:
    redactor = Redactor(names=["Jane Doe", "Jane"], mask_keys=mask_text)
    messages, redaction = redactor.messages([{"role": "user", "content": PROMPT}])
    text = messages[0]["content"]
    for secret in (EMAIL, PHONE, CARD, KEY, "Jane"):
        assert secret not in text
    assert text.count("[EMAIL_1]") == 2 and "[EMAIL_2]" not in text  # the same address twice
    assert "[PHONE_1]" in text and "[CARD_1]" in text and "[NAME_1]" in text
    assert "[REDACTED:api_key]" in text
    assert (
        redaction.restore("Sent to [EMAIL_1], card [CARD_1].") == f"Sent to {EMAIL}, card {CARD}."
    )
    # a new request numbers afresh; ordinary numbers and dates stay
    again, _ = redactor.messages([{"role": "user", "content": "Order 12345 on 2026-11-19, x@y.io"}])
    assert again[0]["content"] == "Order 12345 on 2026-11-19, [EMAIL_1]"


def test_a_card_like_number_that_fails_luhn_is_kept() -> None:
    messages, _ = Redactor().messages([{"role": "user", "content": "ref 4111 1111 1111 1112"}])
    assert messages[0]["content"] == "ref 4111 1111 1111 1112"


@pytest.mark.parametrize(
    ("url", "send", "redact", "policy"),
    [
        ("https://relay.example/v1", False, False, None),
        ("https://relay.example/v1", True, False, "full"),
        ("https://relay.example/v1", True, True, "redacted"),
        ("http://127.0.0.1:8000/v1", False, False, "local"),
        ("http://localhost:8000/v1", False, True, "redacted"),
        ("http://[::1]:8000/v1", False, False, "local"),
    ],
)
def test_endpoint_policy(url: str, send: bool, redact: bool, policy: str | None) -> None:
    assert endpoint_policy(url, send, redact) == policy


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "planner.toml"
    path.write_text(body, encoding="utf-8")
    return path


RELAY = """
[[candidates]]
name = "far-relay"
kind = "relay"
base_url = "{url}"
model = "{model}"
api_key_env = "{env}"
{extra}
"""


def test_an_external_relay_without_a_policy_is_refused(tmp_path: Path) -> None:
    settings = load_settings(
        config(
            tmp_path, RELAY.format(model="m", url="https://relay.example/v1", env="X_KEY", extra="")
        )
    )
    with pytest.raises(ConfigError, match=r"far-relay.*outside this machine.*redact = true"):
        check_endpoints(settings)
    ok = load_settings(
        config(
            tmp_path,
            RELAY.format(
                model="m", url="https://relay.example/v1", env="X_KEY", extra="redact = true"
            ),
        )
    )
    assert [e.policy for e in check_endpoints(ok)] == ["redacted"]


def test_the_cli_refuses_an_external_relay_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    path = config(
        tmp_path, RELAY.format(model="m", url="https://relay.example/v1", env="X_KEY", extra="")
    )
    (tmp_path / "planner.duckdb").touch()
    result = CliRunner().invoke(app, ["replay", "-c", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "far-relay" in lines[0]


@pytest.mark.parametrize("env", ["AWS_SECRET_ACCESS_KEY_ID", "DATABASE_URL", "HOME", "SECRET"])
def test_a_key_variable_must_be_named_like_one(tmp_path: Path, env: str) -> None:
    path = config(tmp_path, RELAY.format(model="m", url="http://127.0.0.1:9/v1", env=env, extra=""))
    with pytest.raises(ConfigError, match=r"api_key_env .* must end in _KEY, _TOKEN or _API_KEY"):
        load_settings(path)
    allowed = path.read_text() + f'\n[privacy]\nallowed_key_envs = ["{env}"]\n'
    path.write_text(allowed)
    assert load_settings(path).candidates[0].api_key_env == env


def test_a_key_is_never_sent_over_http_to_another_machine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"plain http to relay\.example"):
        RelayBackend("far", "http://relay.example/v1", "m", SecretStr("k-123"))
    RelayBackend("near", "http://127.0.0.1:9/v1", "m", SecretStr("k-123"))  # loopback: fine
    RelayBackend("far", "http://relay.example/v1", "m")  # no key: nothing to leak
    settings = load_settings(
        config(
            tmp_path,
            RELAY.format(
                model="m", url="http://relay.example/v1", env="X_KEY", extra="redact = true"
            ),
        )
    )
    with pytest.raises(ConfigError, match="plain http"):
        check_endpoints(settings)


def test_a_redacted_relay_never_sees_the_data_and_the_answers_still_score(
    tmp_path: Path,
) -> None:
    engine = Recording()
    with ServerThread(create_app(engine)) as server:
        extra = 'redact = true\nstream = false\n[privacy]\nnames = ["Jane Doe", "Jane"]'
        settings = load_settings(
            config(
                tmp_path,
                RELAY.format(
                    model="recording", url=server.base_url, env="NO_SUCH_TEST_KEY", extra=extra
                ),
            )
        )
        cand = settings.candidates[0]
        assert redactor_for(cand, settings.privacy.names) is not None
        backend = relay_backend(cand, names=settings.privacy.names)
        results: list[ReplayResult] = []
        request = ReplayRequest(
            "r1",
            [
                {"role": "system", "content": f"Support bot. Escalations: {EMAIL}"},
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
            ],
            max_tokens=200,
        )
        backend.replay([request], results.append)
    sent = repr(engine.seen)
    assert engine.seen, f"the server received nothing: {results}"
    for secret in (EMAIL, PHONE, CARD, KEY, "Jane"):
        assert secret not in sent, f"{secret!r} reached the relay"
    (result,) = results
    assert result.error_kind is None
    production = f"Echo: {PROMPT}"  # what an un-redacted echo would have answered
    assert result.output_text is not None and EMAIL in result.output_text
    assert similarity(production, result.output_text) > 0.9
