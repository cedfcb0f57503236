"""The HTML plan: content, escaping and redaction of logged text, self-containment, and the page
as headless Chromium renders it (screenshot, no console errors, hostile prompts shown as text)."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.plan import assemble_report
from planner.evaluate.conversations import Turn, summarize_turns
from planner.evaluate.decision import Objectives
from planner.evaluate.evidence import Candidate, Observation
from planner.evaluate.projection import Device, Traffic, TypeTraffic
from planner.redact import redact
from planner.report.render import PlanReport, SampleOutput, render_plan, write_plan

HOSTILE_PROMPT = (
    'Summarize: <script>alert("pwned")</script> and <img src=x onerror="alert(1)"> '
    "from ann.lee@acme.example, call +1 (415) 555-0132, key sk-proj-Abcdefghijklmnop1234567890"
)
HOSTILE_ANSWER = "Done </pre></div><b>bold</b> Authorization: Bearer abcdef0123456789.xyz"


def build_report() -> PlanReport:
    rng = random.Random(0)
    cands = {
        "phi-int4": Candidate("phi-int4", "local"),
        "phi-int8": Candidate("phi-int8", "local"),
        "relay": Candidate(
            "relay",
            "relay",
            price_in=0.28,
            price_out=0.42,
            rpm=600,
            tpm=1_000_000,
            base_url="https://relay.example/v1",
            model="ds",
            api_key_env="RELAY_API_KEY",
        ),
        "production": Candidate(
            "production",
            "production",
            price_in=2.0,
            price_out=8.0,
            model="gpt-4.1",
            api_key_env="OPENAI_API_KEY",
        ),
    }
    # classification is scored by label match (every answer right); the others by similarity,
    # which passes at 0.5: the relay is as good as production on summaries, nobody on chat
    means = {
        "classification": {"phi-int4": 1.0, "phi-int8": 1.0, "relay": 1.0},
        "summarization": {"phi-int4": 0.30, "phi-int8": 0.45, "relay": 0.985},
        "chatbot": {"phi-int4": 0.20, "phi-int8": 0.25, "relay": 0.40},
    }
    observations = []
    for task, by_cand in means.items():
        for i in range(200):
            rid = f"{task}-{i}"
            observations.append(
                Observation(
                    rid,
                    task,
                    "production",
                    1.0,
                    "reference",
                    None,
                    300.0,
                    900.0 + rng.random() * 300,
                    100,
                    30,
                    None,
                    0.0005,
                    None,
                    12 if task == "classification" else 60,
                    position=i,
                )
            )
            for cand, mean in by_cand.items():
                observations.append(
                    Observation(
                        rid,
                        task,
                        cand,
                        mean
                        if task == "classification"
                        else min(1.0, max(0.0, rng.gauss(mean, 0.01))),
                        "label_match" if task == "classification" else "similarity (no judge)",
                        None,
                        90.0,
                        300.0 + rng.random() * 200,
                        100,
                        30,
                        25.0,
                        0.00004 if cand == "relay" else 0.0,
                        1400.0 if "int4" in cand else 2500.0,
                        position=i,
                    )
                )
    traffic = Traffic(
        14.0,
        (
            TypeTraffic(
                "classification",
                6000,
                600_000,
                60_000,
                30.0,
                uncertain=300,
                first_half=2900,
                second_half=3100,
            ),
            TypeTraffic(
                "summarization", 3000, 900_000, 180_000, 45.0, first_half=1500, second_half=1500
            ),
            TypeTraffic("chatbot", 1000, 100_000, 40_000, 12.0, first_half=500, second_half=500),
        ),
    )
    fits = {
        "phi-int4": {"fits": True, "needed_mb": 1800, "headroom_mb": 2600, "est_tokens_per_s": 22},
        "phi-int8": {"fits": False, "needed_mb": 5200, "headroom_mb": -400, "est_tokens_per_s": 11},
    }
    turns = [Turn(f"c{i // 3}", i % 3, rng.choice(list(means))) for i in range(300)]
    samples = [
        SampleOutput(
            "summarization",
            "summarization-0",
            HOSTILE_PROMPT,
            "A short summary.",
            (("relay", HOSTILE_ANSWER, 0.97, None), ("phi-int4", None, None, "timeout")),
        ),
        SampleOutput(
            "classification",
            "classification-0",
            "Ticket: refund",
            "billing",
            (("phi-int4", "billing", 1.0, None),),
        ),
    ]
    return assemble_report(
        observations=observations,
        candidates=cands,
        traffic=traffic,
        objectives=Objectives(0.95, 2000),
        fits=fits,
        conversations=summarize_turns(turns),
        device=Device("phone-8gb", power_w=5.0, battery_wh=15.0),
        migration_cost_usd=2000.0,
        classifier={
            "accuracy": 0.931,
            "macro_f1": 0.902,
            "confidence_threshold": 0.6,
            "per_class": {"billing": {"precision": 0.9, "recall": 0.8}},
        },
        samples=samples,
        generated_at="2026-01-01 00:00 UTC",
        run_id="plan-test",
    )


def test_report_content_and_metrics_agree() -> None:
    report = build_report()
    assert report.decision.route_map() == {
        "chatbot": "production",
        "classification": "phi-int4",
        "summarization": "relay",
    }
    page = render_plan(report)
    for heading in (
        "Summary",
        "Workload",
        "Task classifier",
        "Routing table",
        "Task types",
        "Cost–quality frontier",
        "Other routing rules on the same evidence",
        "Rollback chain",
        "Risks",
        "Migration checklist",
    ):
        assert f">{heading}</h2>" in page, heading
    metrics = report.metrics()
    json.dumps(metrics, allow_nan=False)  # every figure is plain JSON
    p = metrics["projection"]
    # the summary shows the same figures metrics.json holds
    assert f"{p['migrated_share'] * 100:.0f}%" in page
    assert f"${p['savings_usd']:,.2f}" in page or f"${p['savings_usd']:,.0f}" in page
    assert (
        metrics["routes"][1]["route"] == "phi-int4"
        and metrics["routes"][1]["memory_guard_mb"] == 1800
    )
    assert [v["name"] for v in metrics["views"]] == ["plan", "by_length", "static"]
    assert any(pt["chosen"] for pt in metrics["frontier"])
    assert "Ship phi-int4 to phone-8gb; its memory guard needs 1800 MB free" in " ".join(
        metrics["checklist"]
    )
    assert "93.1%" in page  # classifier accuracy
    assert "mWh per request" in page  # energy on the device tier
    assert "<svg" in page and page.count("<svg") >= 2  # inline charts: task mix, frontier, cost
    assert "does not fit" in page  # the INT8 model's device fit
    assert "phi-int8 not chosen" in page
    assert "No LLM judge" in page
    # the method is named where the figures are shown; production is the reference, no bar
    assert "Clopper–Pearson one-sided" in page and "BCa bootstrap, 9,999 resamples" in page
    assert "the reference (its logged answers); ceiling not measured" in page
    assert "How a verdict is reached" in page
    route = metrics["routes"][1]
    assert route["samples_needed"] == 160 and route["verdict"]["state"] == "qualifies"
    assert metrics["method"]["bound"] == "Clopper–Pearson one-sided"
    assert metrics["labels"] == []
    assert "cross-fitted" in page.lower() or "Cross-fitted" in page
    assert "Needs the answer&#39;s length in advance" in page


def test_logged_text_is_escaped_and_redacted() -> None:
    page = render_plan(build_report())
    assert "<script" not in page and "<img" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    assert "&lt;/pre&gt;&lt;/div&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    for secret in (
        "ann.lee@acme.example",
        "555-0132",
        "sk-proj-Abcdefghijklmnop",
        "abcdef0123456789",
    ):
        assert secret not in page
    assert "[email]" in page and "[phone]" in page and "[key]" in page and "Bearer [token]" in page
    assert "failed: timeout" in page


def test_page_is_self_contained() -> None:
    page = render_plan(build_report())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only in-page references (SVG clip paths)
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # three inline charts, no id clashes
    assert "<link" not in page
    assert "@media print" in page and "@media (max-width" in page


def test_redaction_keeps_ordinary_numbers() -> None:
    text = "7 x 3 = 21. The answer is 16. On 2024-01-15 we sold 1,234 units for $99.50."
    assert redact(text) == text
    assert redact("mail bob@example.org or +44 20 7946 0958") == "mail [email] or [phone]"
    assert (
        redact("token=abcdef123456 and api_key: 'zzzzzzzz'")
        == "token=[secret] and api_key: [secret]"
    )
    assert redact("0123456789abcdef0123456789abcdef") == "[hex]"
    assert redact(None) == ""


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_lines(stderr: str, url: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and url in line]


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)"
)
def test_plan_in_headless_chromium(tmp_path: Path) -> None:
    path = write_plan(build_report(), tmp_path / "plan.html")
    url = path.as_uri()

    # the detector works: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    control = chromium(broken.as_uri(), tmp_path / "p0", "--dump-dom")
    assert console_lines(control.stderr, broken.as_uri()), control.stderr[-2000:]

    dom = chromium(url, tmp_path / "p1", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_lines(dom.stderr, url) == []
    assert "<script" not in dom.stdout.lower() and "<img" not in dom.stdout.lower()
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom.stdout))
    assert '<script>alert("pwned")</script>' in text
    assert '<img src=x onerror="alert(1)">' in text
    assert "Rollback chain" in text and "phi-int4" in text

    shot = tmp_path / "plan.png"
    desktop = chromium(
        url, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars"
    )
    assert desktop.returncode == 0 and shot.stat().st_size > 50_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_lines(desktop.stderr, url) == []
    phone = tmp_path / "phone.png"
    small = chromium(
        url, tmp_path / "p3", f"--screenshot={phone}", "--window-size=390,1600", "--hide-scrollbars"
    )
    assert small.returncode == 0 and phone.stat().st_size > 20_000
    pdf = tmp_path / "plan.pdf"
    printed = chromium(url, tmp_path / "p4", f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert printed.returncode == 0 and pdf.read_bytes()[:5] == b"%PDF-"
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))
    assert pages >= 3
