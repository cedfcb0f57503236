"""`migration-planner serve`: the nightly flow as a scheduled Prefect deployment, served here.

With a Prefect server already configured (``PREFECT_API_URL`` in the environment or the active
Prefect profile) the deployment is registered there. Without one, a Prefect server is started on
127.0.0.1 (never another interface: it has no authentication) with its database and log under
``PREFECT_HOME``, and stopped when serving stops. A team with its own server and work pools
deploys ``prefect.yaml`` with ``prefect deploy`` instead and needs none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import httpx

from planner.errors import ConfigError, PlannerError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

LOCAL_HOST = "127.0.0.1"
DEPLOYMENT_TAGS = ["migration-planner"]


class PrefectServerError(PlannerError):
    """The local Prefect server did not start (or died); names the log file to read."""

    def __init__(self, log_path: Path, reason: str) -> None:
        self.log_path = log_path
        self.reason = reason
        super().__init__(f"local Prefect server: {reason} (log: {log_path})")


def configured_api_url() -> str | None:
    """The Prefect API this process talks to when one is configured (environment or profile)."""
    from prefect.settings import get_current_settings

    return os.environ.get("PREFECT_API_URL") or get_current_settings().api.url or None


def ui_url(api_url: str) -> str:
    """Where a person opens the Prefect UI for the API at ``api_url``."""
    return api_url.rstrip("/").removesuffix("/api") or api_url


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _last_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group (its own session), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def _drain_prefect_workers() -> None:
    """Send the events and logs this process still holds before their server goes away
    (else Prefect prints connection errors at exit), as Prefect's own test harness does."""
    try:
        asyncio.get_running_loop()
        return  # (an async caller drains with Prefect's async API itself)
    except RuntimeError:
        pass
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the server stops either way
            worker.drain_all(timeout=5)


def _wait_healthy(proc: subprocess.Popen[bytes], api_url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                last = _last_line(log)
                raise PrefectServerError(
                    log, f"exited with code {code} before answering" + (f": {last}" if last else "")
                )
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise PrefectServerError(
                    log, f"{api_url}/health did not answer within {timeout_s:g} s"
                )
            time.sleep(0.25)


@contextmanager
def local_prefect_server(
    port: int | None = None, *, timeout_s: float = 120.0, home: Path | None = None
) -> Iterator[str]:
    """Yield the Prefect API URL to use, starting a server on 127.0.0.1 when none is configured.

    A configured API (``PREFECT_API_URL``, or the active profile's) is yielded untouched. Else
    ``prefect server start`` runs in its own session on ``port`` (default: a free one), logging to
    ``PREFECT_HOME/server.log``; ``PREFECT_API_URL`` points at it (this process and the flow runs
    it spawns) until the block exits, when the server is stopped and the variable restored.
    """
    configured = configured_api_url()
    if configured:
        yield configured
        return

    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    home = Path(home or os.environ.get("PREFECT_HOME") or get_current_settings().home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    port = port or _free_port(LOCAL_HOST)
    api_url = f"http://{LOCAL_HOST}:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "COLUMNS": "300",  # rich would wrap the one line an error needs
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--no-prompt"]
    command += ["--host", LOCAL_HOST, "--port", str(port), "--analytics-off"]
    previous = os.environ.get("PREFECT_API_URL")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop it in order
        )
    try:
        _wait_healthy(proc, api_url, log_path, timeout_s)
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        if proc.poll() is None:
            _drain_prefect_workers()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        _stop(proc)


def next_run_time(cron: str, timezone: str, after: dt.datetime | None = None) -> dt.datetime:
    """When ``cron`` in ``timezone`` next fires after ``after`` (default: now), as Prefect counts.

    Raises :class:`ConfigError` naming the bad cron string or time zone.
    """
    from prefect.server.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError("[schedule]", msg) from exc
    start = after or dt.datetime.now(dt.UTC)
    dates = asyncio.run(schedule.get_dates(n=1, start=start))
    if not dates:
        raise ConfigError("[schedule]", f"cron {cron!r} never fires")
    return dates[0]


def build_deployment(
    flow: Flow[..., Any],
    *,
    name: str,
    cron: str,
    timezone: str,
    parameters: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """``flow`` as a deployment on a cron schedule, imported by module path when a run starts
    (so it runs wherever the project is installed, whatever the working directory)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    next_run_time(cron, timezone)  # one clear error for a bad cron or zone, before any I/O
    deployment = flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters or {},
        tags=DEPLOYMENT_TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return cast("RunnerDeployment", deployment)  # (async_dispatch: sync callers get the value)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve_flow(
    flow: Flow[..., Any],
    *,
    name: str,
    cron: str,
    timezone: str,
    parameters: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve ``flow`` on a cron schedule until Ctrl-C or SIGTERM (one run at a time).

    Starts (and finally stops) a local Prefect server when none is configured; prints where the
    UI is and when the first run is due.
    """
    from prefect import serve

    deployment = build_deployment(
        flow, name=name, cron=cron, timezone=timezone, parameters=parameters
    )
    first = next_run_time(cron, timezone)
    local = configured_api_url() is None
    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (systemd, docker stop) while the server starts: stop like Ctrl-C. Once serving,
    # Prefect's runner takes SIGTERM over and exits with SystemExit(0); both end up below.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        if local:
            echo(f"starting a local Prefect server on {LOCAL_HOST} (no PREFECT_API_URL set)...")
        with local_prefect_server() as api_url:
            echo(f"Prefect UI:  {ui_url(api_url)}")
            echo(f"deployment:  {flow.name}/{name}  cron {cron!r} ({timezone})")
            echo(f"next run:    {first.isoformat(timespec='minutes')}")
            env = f"PREFECT_API_URL={api_url} " if local else ""
            echo(f"run now:     {env}prefect deployment run '{flow.name}/{name}'")
            echo("Ctrl-C stops serving" + (" and the local server." if local else "."))
            with warnings.catch_warnings():
                # (prefect 3.8's runner SIGTERM handler drops its own stop coroutine)
                warnings.filterwarnings("ignore", "coroutine 'Runner.astop' was never awaited")
                serve(deployment, limit=1, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if sys.exc_info()[0] in (None, SystemExit):
            echo("stopped serving" + ("; local Prefect server stopped." if local else "."))


def serve_nightly(
    config_path: str | None,
    cron: str,
    timezone: str,
    name: str = "nightly",
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the nightly parent flow; its runs read ``config_path`` (made absolute here)."""
    from flows.nightly import nightly_flow

    config = str(Path(config_path).resolve()) if config_path else None
    serve_flow(
        nightly_flow,
        name=name,
        cron=cron,
        timezone=timezone,
        parameters={"config_path": config, "trigger": "schedule"},
        echo=echo,
    )
