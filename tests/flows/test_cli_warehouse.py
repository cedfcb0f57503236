"""The CLI as a user meets it: exit codes, one-line errors, --json for machines."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from demo.logs import write_chat_log, write_openai_batch
from flows.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_ingest_json_counts_and_rejects(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl.gz"
    write_chat_log(logs, 200, seed=2, malformed=9, blank=2, duplicates=3)
    wh = str(tmp_path / "w.duckdb")
    code, out, err = run("ingest", str(logs), "--warehouse", wh, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {k: data[k] for k in ("lines_read", "loaded", "duplicates", "rejected", "blank")} == {
        "lines_read": 214,
        "loaded": 200,
        "duplicates": 3,
        "rejected": 9,
        "blank": 2,
    }
    code, out, _ = run("rejects", "--warehouse", wh, "--json")
    assert code == 0
    rejects = json.loads(out)
    assert rejects["total"] == 9 and all(
        r["file"] == str(logs) and r["line"] > 0 for r in rejects["lines"]
    )
    code, _, _ = run("ingest", str(logs), "--warehouse", wh, "--strict")
    assert code == 0  # already ingested: nothing new was rejected
    other = tmp_path / "other.jsonl"
    write_chat_log(other, 10, seed=9, malformed=1)
    code, out, err = run("ingest", str(other), "--warehouse", wh, "--strict")
    assert code == 1 and "1 lines were rejected" in err


def test_ingest_batch_pair(tmp_path: Path) -> None:
    write_openai_batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl", 20)
    code, out, err = run(
        "ingest",
        str(tmp_path / "in.jsonl"),
        "--batch-output",
        str(tmp_path / "out.jsonl"),
        "-w",
        str(tmp_path / "w.duckdb"),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["loaded"], data["joined"], data["rejected"]) == (20, 19, 0)


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    notes = tmp_path / "notes.duckdb"
    notes.write_text("not a database, but precious\n")
    logs = tmp_path / "l.jsonl"
    write_chat_log(logs, 5)
    (tmp_path / "empty").mkdir()
    cases = [
        (
            ["ingest", str(tmp_path / "nope.jsonl"), "-w", str(tmp_path / "w.duckdb")],
            "no such file or directory",
        ),
        (
            ["ingest", str(tmp_path / "empty"), "-w", str(tmp_path / "w.duckdb")],
            "directory holds no log files",
        ),
        (["ingest", str(logs), "-w", str(notes)], "not a DuckDB database file"),
        (
            ["ingest", str(logs), "--format", "csv", "-w", str(tmp_path / "w.duckdb")],
            "--format must be one of",
        ),
        (["profile", "-w", str(tmp_path / "never.duckdb")], "no such warehouse file"),
        (["ingest", str(logs), "-c", str(tmp_path / "missing.toml")], "config file not found"),
    ]
    for args, message in cases:
        code, out, err = run(*args)
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            args,
            err,
        )
    assert notes.read_text() == "not a database, but precious\n"
    assert not (tmp_path / "w.duckdb").exists()  # nothing written by the failed ingests


def test_profile_on_an_empty_warehouse_says_so(tmp_path: Path) -> None:
    logs = tmp_path / "bad.jsonl"
    logs.write_text("nope\n")
    wh = str(tmp_path / "w.duckdb")
    assert run("ingest", str(logs), "-w", wh)[0] == 0
    code, _, err = run("profile", "-w", wh)
    assert code == 2 and "no requests yet" in err


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "planner.toml"
    cfg.write_text("[replay]\nper_type = -3\n")
    code, _, err = run("profile", "-c", str(cfg))
    assert code == 2 and "field replay.per_type" in err
    cfg.write_text("[replay\n")
    code, _, err = run("profile", "-c", str(cfg))
    assert code == 2 and "not valid TOML" in err


def test_profile_table_and_json(tmp_path: Path) -> None:
    logs = tmp_path / "l.jsonl"
    write_chat_log(logs, 300, seed=5)
    wh = str(tmp_path / "w.duckdb")
    run("ingest", str(logs), "-w", wh)
    code, out, _ = run("profile", "-w", wh, "--json")
    data = json.loads(out)
    assert code == 0 and data["overview"]["requests"] == 300
    code, out, _ = run("profile", "-w", wh)
    assert code == 0 and "per model" in out and "gpt-4.1" in out and "exact-repeat prompts" in out
