"""`migration-planner classify train | predict | evaluate`: exit codes and --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from demo.logs import write_chat_log
from flows.cli import app
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

CROSSSOURCE = Path(__file__).parent / "data" / "crosssource.jsonl"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    write_chat_log(folder / "log.jsonl", 900, seed=2)
    path = folder / "planner.duckdb"
    con = open_warehouse(path)
    ingest_paths(con, [folder / "log.jsonl"])
    con.close()
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["classify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_train_predict_evaluate_with_json(warehouse: Path) -> None:
    code, out, err = run("train", "--warehouse", str(warehouse), "--labels", "metadata", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert Path(summary["model_dir"]) == warehouse.parent / "classifier"
    assert (warehouse.parent / "classifier" / "classifier.onnx").is_file()
    assert summary["label_sources"]["metadata"] == summary["rows"] > 0
    assert summary["macro_f1"] > 0.9 and summary["parity"]["labels_equal"]
    assert "train:" in err  # progress goes to stderr, stdout stays JSON

    code, out, err = run("predict", "--warehouse", str(warehouse), "--json")
    assert code == 0, err
    pred = json.loads(out)
    n = (
        open_warehouse(warehouse, read_only=True)
        .execute("SELECT count(*) FROM requests")
        .fetchone()
    )
    assert n is not None and pred["rows"] == n[0]
    assert pred["drift"] is None

    code, out, _ = run("predict", "--warehouse", str(warehouse), "--json")
    assert json.loads(out)["drift"]["mix_verdict"] == "stable"

    code, out, _ = run(
        "predict", "--warehouse", str(warehouse), "--text", "Translate to French: the cat", "--json"
    )
    assert code == 0 and json.loads(out)["task_type"] == "rewrite"
    code, out, _ = run(
        "predict", "--warehouse", str(warehouse), "--text", "Write a haiku about rain"
    )
    assert code == 0 and out.startswith("text_generation")

    code, out, err = run(
        "evaluate", "--warehouse", str(warehouse), "--labeled", str(CROSSSOURCE), "--json"
    )
    assert code == 0, err
    ev = json.loads(out)
    assert {"macro_f1", "per_class", "confusion"} <= set(ev)
    assert ev["rows"] == 220 and len(ev["per_class"]) == 11
    assert len(ev["confusion"]["matrix"]) == len(ev["confusion"]["labels"])

    code, out, _ = run("evaluate", "--warehouse", str(warehouse), "--labeled", str(CROSSSOURCE))
    assert code == 0 and "macro-F1" in out and "Confusion" in out


def test_train_table_output(warehouse: Path, tmp_path: Path) -> None:
    code, out, err = run("train", "-w", str(warehouse), "--model-dir", str(tmp_path / "m"))
    assert code == 0, err
    assert "Held-out: macro-F1" in out and "Labels by source: metadata" in out
    assert "Lexicon prior: on (kept: fewer than 200 training texts)" in out  # the demo repeats
    assert (tmp_path / "m" / "model_card.json").is_file()


def test_user_errors_are_one_line_and_exit_2(warehouse: Path, tmp_path: Path) -> None:
    if not (warehouse.parent / "classifier").is_dir():  # run alone: evaluate needs a model
        assert run("train", "--warehouse", str(warehouse), "--json")[0] == 0
    code, _, err = run("train", "--warehouse", str(tmp_path / "missing.duckdb"))
    assert code == 2 and err.startswith("error: ") and "no such warehouse file" in err
    assert "Traceback" not in err
    code, _, err = run("train", "--warehouse", str(warehouse), "--labels", "humans")
    assert code == 2 and "--labels must be one of metadata, rules, relay, all" in err
    code, _, err = run("train", "--warehouse", str(warehouse), "--lexicon-prior", "maybe")
    assert code == 2 and "--lexicon-prior must be one of auto, on, off; got 'maybe'" in err
    code, _, err = run("train", "--warehouse", str(warehouse), "--encoder", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'encoder.onnx'}: missing: not an encoder folder" in err
    code, _, err = run(
        "predict", "--warehouse", str(warehouse), "--model-dir", str(tmp_path / "none")
    )
    assert code == 2 and "no classifier folder" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "request": {"messages": [{"role": "user", "content": "x"}]}}\nnot json\n'
    )
    code, _, err = run("evaluate", "--warehouse", str(warehouse), "--labeled", str(bad))
    assert (
        code == 2
        and "no usable labeled lines" in err
        and "no metadata.task_type: 1 (lines [1])" in err
    )
    code, _, err = run(
        "evaluate", "--warehouse", str(warehouse), "--labeled", str(tmp_path / "x.jsonl")
    )
    assert code == 2 and "labeled file not found" in err
    empty = tmp_path / "empty.duckdb"
    open_warehouse(empty).close()
    code, _, err = run("train", "--warehouse", str(empty))
    assert code == 2 and "the warehouse has no requests yet" in err
    code, _, err = run(
        "predict", "--warehouse", str(empty), "--model-dir", str(warehouse.parent / "classifier")
    )
    assert code == 2 and "the warehouse has no requests yet" in err
    tax = tmp_path / "tax.json"
    tax.write_text("{}")
    code, _, err = run("train", "--warehouse", str(warehouse), "--taxonomy", str(tax))
    assert code == 2 and "task_types" in err


def test_rules_bootstrap_on_an_unlabeled_warehouse(tmp_path: Path) -> None:
    write_chat_log(tmp_path / "log.jsonl", 600, seed=3)
    path = tmp_path / "w.duckdb"
    con = open_warehouse(path)
    ingest_paths(con, [tmp_path / "log.jsonl"])
    con.execute("UPDATE requests SET label_task_type = NULL")
    con.close()
    code, out, err = run("train", "--warehouse", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rules_bootstrap"] is True
    assert summary["label_sources"]["rules"] > 100 and summary["label_sources"]["metadata"] == 0
