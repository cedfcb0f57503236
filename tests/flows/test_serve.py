"""`serve`: a real local Prefect server on 127.0.0.1, the nightly deployment on it, Ctrl-C."""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from flows.serve import PrefectServerError, local_prefect_server, next_run_time
from planner.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _no_configured_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PREFECT_API_URL from the shell, nor from a Prefect test harness of another test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def _prefect_servers() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "server" in p.cmdline() and "prefect" in " ".join(p.cmdline())
    ]


def test_configured_api_is_used_and_nothing_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    with local_prefect_server(home=tmp_path) as url:
        assert url == "http://prefect.internal:4200/api"
        assert not _prefect_servers()
    assert not (tmp_path / "server.log").exists()
    assert os.environ["PREFECT_API_URL"] == "http://prefect.internal:4200/api"


def test_next_run_time_counts_in_the_time_zone() -> None:
    noon = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    berlin = next_run_time("0 2 * * *", "Europe/Berlin", after=noon)
    assert berlin.astimezone(dt.UTC) == dt.datetime(2026, 11, 21, 1, 0, tzinfo=dt.UTC)
    assert next_run_time("30 23 * * *", "UTC", after=noon) == noon.replace(hour=23, minute=30)
    with pytest.raises(ConfigError, match=r"\[schedule\].*cron string"):
        next_run_time("every night", "UTC")
    with pytest.raises(ConfigError, match="Invalid timezone"):
        next_run_time("0 2 * * *", "Mars/Olympus")


def test_a_server_that_does_not_answer_names_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        _no_configured_api(monkeypatch),
        pytest.raises(PrefectServerError) as info,
        local_prefect_server(home=tmp_path, timeout_s=0.2),
    ):
        pytest.fail("the block must not run")
    assert str(tmp_path / "server.log") in str(info.value)
    assert "did not answer within 0.2 s" in str(info.value)
    assert not _prefect_servers()  # stopped, not left behind
    assert "PREFECT_API_URL" not in os.environ


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], prefix: str, seen: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r} within {timeout_s} s; got: {seen}")


def test_serve_nightly_on_a_local_server_then_ctrl_c(tmp_path: Path) -> None:
    """The whole `serve` path in its own process: a Prefect server only on 127.0.0.1, the
    deployment with its schedule and parameters read back over the API, and Ctrl-C stopping
    both the serving and the server."""
    (tmp_path / "planner.toml").write_text("[replay]\nseed = 1\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    code = (
        "from flows.serve import serve_nightly; "
        "serve_nightly('planner.toml', '15 3 1 1 *', 'Europe/Berlin', name='nightly-test')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        lines = _lines(proc)
        ui = _wait_for(lines, "Prefect UI:", seen, 180).split()[-1]
        assert ui.startswith("http://127.0.0.1:")
        api = f"{ui}/api"
        next_line = _wait_for(lines, "next run:", seen, 10)
        assert next_line.split()[-1].endswith("03:15+01:00")  # Jan 1, 03:15 Berlin (CET)

        (server,) = [p for p in _prefect_servers() if "start" in p.cmdline()]
        port = int(ui.rsplit(":", 1)[1])
        listening = [
            c.laddr
            for c in server.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}

        deployment: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            resp = httpx.get(f"{api}/deployments/name/migration-planner-nightly/nightly-test")
            if resp.status_code == 200:
                deployment = resp.json()
                break
            time.sleep(0.5)
        assert deployment, f"deployment never appeared; output: {seen}"
        (sched,) = deployment["schedules"]
        assert sched["schedule"]["cron"] == "15 3 1 1 *"
        assert sched["schedule"]["timezone"] == "Europe/Berlin" and sched["active"] is True
        assert deployment["parameters"] == {
            "config_path": str(tmp_path / "planner.toml"),
            "trigger": "schedule",
        }
        assert deployment["entrypoint"] == "flows.nightly.nightly_flow"
        assert deployment["tags"] == ["migration-planner"]

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0, seen
        _wait_for(lines, "stopped serving; local Prefect server stopped.", seen, 10)
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api}/health", timeout=2)
        assert "Traceback" not in "\n".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken, _no_configured_api(monkeypatch):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with (
            pytest.raises(
                PrefectServerError, match=f"exited with code 1.*{port} is already in use"
            ) as info,
            local_prefect_server(port, home=tmp_path, timeout_s=120),
        ):
            pytest.fail("the block must not run")
    assert str(tmp_path / "server.log") in str(info.value)
    assert not _prefect_servers()


def _cli(*args: str) -> tuple[int, str, str]:
    """`serve` registered on an app the way flows/cli.py registers it."""
    from typer.testing import CliRunner

    from flows.cli_common import new_app
    from flows.cli_serve import register

    app = new_app("test")
    register(app)
    app.command("other")(lambda: None)  # two commands, so `serve` is a subcommand
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_help_and_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = _cli("serve", "--help")
    assert code == 0 and "127.0.0.1" in out and "prefect.yaml" in out and "--cron" in out
    code, _, err = _cli("serve", "--cron", "every night")
    assert (code, err) == (2, 'error: [schedule]: Invalid cron string: "every night"\n')
    code, _, err = _cli("serve", "-c", str(tmp_path / "missing.toml"))
    assert code == 2 and err == f"error: {tmp_path / 'missing.toml'}: config file not found\n"
    # the defaults come from [schedule] in ./planner.toml
    (tmp_path / "planner.toml").write_text('[schedule]\ntimezone = "Mars/Olympus"\n')
    code, _, err = _cli("serve")
    assert code == 2 and err.startswith('error: [schedule]: Invalid timezone: "Mars/Olympus"')
    assert not _prefect_servers()


def test_prefect_yaml_deploys_onto_an_existing_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The team path: a server that already runs (here one we start), a process work pool, and
    `prefect deploy --name nightly` reading prefect.yaml from the repository root."""
    with _no_configured_api(monkeypatch), local_prefect_server(home=tmp_path) as api:
        env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "300"}
        prefect = [sys.executable, "-m", "prefect"]
        pool = subprocess.run(
            [*prefect, "work-pool", "create", "default-process-pool", "--type", "process"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run(
            [*prefect, "deploy", "--name", "nightly", "--no-prompt"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # (its exit code is 1 with fastapi >= 0.151: Prefect 3.8.8's worker check after the
        # deployment is created sends null limit/offset, which that fastapi refuses)
        assert "Deployment 'migration-planner-nightly/nightly' successfully created" in (
            deploy.stdout
        ), deploy.stdout + deploy.stderr
        resp = httpx.get(f"{api}/deployments/name/migration-planner-nightly/nightly")
        assert resp.status_code == 200
        deployment = resp.json()
    (sched,) = deployment["schedules"]
    assert sched["schedule"] == {"cron": "0 2 * * *", "timezone": "UTC", "day_or": True}
    assert sched["active"] is True
    assert deployment["entrypoint"] == "flows/nightly.py:nightly_flow"
    assert deployment["parameters"] == {"config_path": "planner.toml", "trigger": "schedule"}
    assert deployment["work_pool_name"] == "default-process-pool"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    assert not _prefect_servers()
