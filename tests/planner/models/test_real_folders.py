"""The local runtime on real model folders (real weights, converted by `make real-models`):
sliding-window caches, memory that follows the request and not the declared context, typed
allocation failures, batching that says what it did, BOS and end-of-turn tokens, and parameter
counts that count a shared tensor once.

Folders: SmolLM2-135M-Instruct (Llama architecture, ChatML) in INT4/INT8/fp32, and the Gemma 3
270M base model (sliding-window attention, window 512, needs BOS) in INT4/INT8. Each test asks
for a few short answers (8-16 tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import ModelMemoryError
from planner.models.devices import MB, RUNTIME_OVERHEAD_MB, generation_bytes
from planner.models.folder import inspect_model, open_model_folder
from planner.models.runtime import BUCKET_TOKENS, GenaiRuntime, batching_for, cache_policy
from planner.replay.local import LocalBackend
from planner.replay.protocol import ERROR_KINDS, ReplayRequest, ReplayResult
from tests.conftest import real_model

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def run(backend: LocalBackend, requests: list[ReplayRequest]) -> list[ReplayResult]:
    results: list[ReplayResult] = []
    backend.replay(requests, results.append)
    return results


def linked_copy(src: Path, dest: Path, **model_fields: object) -> Path:
    """``src`` as symlinks in ``dest`` (the real folder is never written), with
    ``genai_config.json``'s ``model`` fields replaced."""
    dest.mkdir()
    for f in src.iterdir():
        if f.name != "genai_config.json":
            os.symlink(f, dest / f.name)
    config = json.loads((src / "genai_config.json").read_text())
    config["model"].update(model_fields)
    if "context_length" in model_fields:
        config["search"]["max_length"] = model_fields["context_length"]
    (dest / "genai_config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def gemma() -> LocalBackend:
    backend = LocalBackend("gemma", real_model("gemma3-270m", "int4"), max_new_tokens=8)
    yield backend
    backend.close()


# -- sliding-window caches (Gemma 3) ---------------------------------------------------------


def test_a_long_request_then_a_short_one_both_succeed_on_a_sliding_window_model(
    gemma: LocalBackend,
) -> None:
    policy = cache_policy(gemma.folder)
    assert not policy.rewindable and policy.min_length == 512  # decided from genai_config.json
    long_text = "The quick brown fox jumps over the lazy dog. " * 55  # > window + slack (528)
    requests = [
        ReplayRequest("long", [{"role": "user", "content": long_text}], 8),
        ReplayRequest("short", [{"role": "user", "content": "The capital of France is"}], 8),
        ReplayRequest("short-again", [{"role": "user", "content": "The capital of France is"}], 8),
    ]
    results = run(gemma, requests)
    assert [r.error_kind for r in results] == [None, None, None], [r.error_message for r in results]
    assert results[0].prompt_tokens is not None and results[0].prompt_tokens > 528
    # BOS is there (Gemma answers garbage without it) and the answer is the base model's
    assert "Paris" in str(results[1].output_text)
    assert results[1].output_text == results[2].output_text


def test_gemma_prompts_start_with_bos_once(gemma: LocalBackend) -> None:
    rt = gemma.runtime
    assert rt.add_bos and rt.bos_id == 2
    ids = rt.encode_messages(CAPITAL)
    assert ids[0] == 2 and ids[1] != 2
    assert rt.encode("The capital")[0] != 2  # plain encoding (token counts) adds nothing


def test_batching_a_sliding_window_model_is_reported_not_silent(gemma: LocalBackend) -> None:
    used, why = batching_for(gemma.folder, 8)
    assert used == 1 and why is not None and "sliding-window attention (window 512" in why
    backend = LocalBackend("gemma-b8", gemma.model_dir, max_new_tokens=8, batch_size=8)
    assert backend.batching == {"requested": 8, "used": 1, "why": why}
    backend._runtime = gemma.runtime  # the loaded model, not a second copy
    requests = [
        ReplayRequest(f"q{i}", [{"role": "user", "content": f"Number {i} is"}], 8) for i in range(2)
    ]
    assert all(r.ok for r in run(backend, requests))
    assert backend.stats()["batching"]["used"] == 1


# -- memory ------------------------------------------------------------------------------------


PEAK = """
import json, sys
from pathlib import Path
from planner.models.runtime import GenaiRuntime
rt = GenaiRuntime(Path(sys.argv[1]), threads=1)
prompt = rt.encode_messages([{"role": "user", "content": "What is the capital of France?"}])
with rt.measure() as mem:
    (gen,) = rt.generate([prompt], [12])
print(json.dumps({"peak_mb": mem.peak_mb, "held": rt._held_length, "text": rt.decode(gen.tokens),
                  "kv_per_token": rt.info.kv_bytes_per_token, "context": rt.context_length}))
"""


def own_peak(folder: Path) -> dict[str, object]:
    """The model's own peak for one short request, in a fresh process (a clean baseline)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_memory_does_not_scale_with_the_declared_context(tmp_path: Path) -> None:
    """SmolLM2 declared with a 1,048,576-token context: a generator at the declared length would
    need 48 GB of KV cache; each request gets one of its own size instead, so the model's peak
    is the same as with its real 8,192."""
    src = real_model("smollm2-135m-instruct", "int4")
    normal = own_peak(src)
    huge = own_peak(linked_copy(src, tmp_path / "huge", context_length=1 << 20))
    assert huge["context"] == 1 << 20 and huge["text"] == normal["text"]
    declared_kv_mb = float(huge["kv_per_token"]) * (1 << 20) / MB  # type: ignore[arg-type]
    assert declared_kv_mb > 40_000
    assert huge["held"] == normal["held"] == BUCKET_TOKENS  # prompt + 12 new: one bucket
    peak, base = float(huge["peak_mb"]), float(normal["peak_mb"])  # type: ignore[arg-type]
    assert 50 < peak < 400  # weights (86 MB), runtime, one bucket of cache (11 MB), buffers
    assert abs(peak - base) < 0.1 * base, (base, peak)


BACKEND_PEAK = """
import json, sys
from pathlib import Path
from planner.replay.local import LocalBackend
from planner.replay.protocol import ReplayRequest
backend = LocalBackend("smol", Path(sys.argv[1]), max_new_tokens=16)
results = []
backend.replay([ReplayRequest("q", [{"role": "user", "content": "What is the capital of France?"}],
                              16)], results.append)
(result,) = results
print(json.dumps({"ok": result.ok, "peak_mb": result.peak_rss_mb,
                  "prompt_tokens": result.prompt_tokens, "held": backend.runtime._held_length}))
"""


def test_the_peak_stays_within_the_fit_tables_formula() -> None:
    """The model's own peak for a request (a LocalBackend's result) is within what devices.py
    would budget for it. Measured in a fresh process, as own_peak is: the peak counts resident
    growth since the load, and in a process that freed much before (a long test run) the model
    reuses those pages and its growth undercounts it (17 MB for 82 MB of weights, once)."""
    folder = real_model("smollm2-135m-instruct", "int4")
    done = subprocess.run(
        [sys.executable, "-c", BACKEND_PEAK, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    info = inspect_model(folder)
    assert result["ok"] and result["peak_mb"] is not None and result["prompt_tokens"] is not None
    kv, logits = generation_bytes(
        info, prompt_tokens=result["prompt_tokens"], max_length=result["held"]
    )
    budget = info.weight_bytes / MB + (kv + logits) / MB + RUNTIME_OVERHEAD_MB
    assert info.weight_bytes / MB * 0.5 < result["peak_mb"] < budget


def test_a_request_that_does_not_fit_is_a_typed_memory_error_and_the_next_starts_clean() -> None:
    folder = real_model("smollm2-135m-instruct", "int4")
    backend = LocalBackend("smol", folder, max_new_tokens=8192, memory_limit_mb=300)
    requests = [ReplayRequest("big", CAPITAL, 8000), ReplayRequest("small", CAPITAL, 8)]
    big, small = run(backend, requests)
    assert big.error_kind == "memory" and "memory" in ERROR_KINDS
    message = str(big.error_message)
    assert str(folder) in message and "max_length 8192" in message
    assert "MB is left of the 300 MB memory limit" in message
    assert "lower max_new_tokens" in message and "device tier" in message
    assert small.ok and small.completion_tokens == 8
    rt = backend.runtime
    with pytest.raises(ModelMemoryError) as caught:
        rt.check_memory(8192, 20)
    assert caught.value.asked_bytes > caught.value.available_bytes > 0
    assert caught.value.path == str(folder) and caught.value.max_length == 8192
    backend.close()


ALLOCATION_FAILURE = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from planner.errors import ModelMemoryError
from planner.models.runtime import GenaiRuntime
rt = GenaiRuntime(Path(sys.argv[1]), threads=1)
prompt = rt.encode_messages([{"role": "user", "content": "Hi"}])
try:
    rt.generate([prompt], [200_000])  # 9 GB of KV cache: passes the check, not the rlimit
except ModelMemoryError as exc:
    print("TYPED", exc.max_length, exc.asked_bytes, str(exc))
print("NEXT", len(rt.generate([prompt], [4])[0].tokens))
"""


def test_the_runtimes_own_allocation_failure_becomes_the_typed_error(tmp_path: Path) -> None:
    """Under an address-space limit the free-RAM check passes and onnxruntime-genai itself fails
    to allocate: that too reaches the caller as a ModelMemoryError naming the folder."""
    huge = linked_copy(
        real_model("smollm2-135m-instruct", "int4"), tmp_path / "huge", context_length=1 << 20
    )
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATION_FAILURE, str(huge)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert "TYPED" in out, done.stderr[-2000:]
    assert "Could not allocate the key-value cache buffer" in out and str(huge) in out
    assert "lower max_new_tokens" in out
    assert "NEXT 4" in out


# -- chat: templates, end of turn --------------------------------------------------------------


def test_smollm2_multi_turn_chat_with_parts_and_its_own_end_of_turn() -> None:
    folder = real_model("smollm2-135m-instruct", "fp32")
    rt = GenaiRuntime(folder)
    messages = [
        {"role": "system", "content": "You are a helpful assistant.", "name": None},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?", "tool_calls": None},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the capital "},
                {"type": "text", "text": "of France?"},
            ],
        },
    ]
    assert rt.render(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = rt.encode_messages(messages)
    assert ids[0] == 1 and ids.count(2) == 4  # <|im_start|> opens, 4 turns end with <|im_end|>
    assert 2 in rt.eos_ids
    (gen,) = rt.generate([rt.encode_messages(CAPITAL)], [16])
    assert gen.finish_reason == "stop" and len(gen.tokens) < 16
    assert rt.decode(gen.tokens) == "The capital of France is Paris."
    rt.close()


def test_the_templates_end_of_turn_stops_generation_when_the_config_omits_it(
    tmp_path: Path,
) -> None:
    """A folder whose genai_config names only <|endoftext|> still stops at <|im_end|>, the token
    its chat template ends an assistant turn with."""
    folder = linked_copy(
        real_model("smollm2-135m-instruct", "fp32"), tmp_path / "eos", eos_token_id=0
    )
    rt = GenaiRuntime(folder)
    assert 2 in rt.eos_ids
    (gen,) = rt.generate([rt.encode_messages(CAPITAL)], [16])
    assert gen.finish_reason == "stop"
    assert rt.decode(gen.tokens) == "The capital of France is Paris."
    rt.close()


# -- parameter counts ------------------------------------------------------------------------


def test_int8_and_int4_parameter_counts_agree_with_fp32(tmp_path: Path) -> None:
    counts = {
        p: inspect_model(real_model("smollm2-135m-instruct", p)).parameters
        for p in ("fp32", "int8", "int4")
    }
    assert counts == {"fp32": 134_515_008, "int8": 134_515_008, "int4": 134_515_008}
    gemma = {p: inspect_model(real_model("gemma3-270m", p)) for p in ("int4", "int8")}
    assert gemma["int4"].parameters == gemma["int8"].parameters == 268_098_176
    assert gemma["int8"].duplicate_parameters == 262_144 * 640  # the tied embedding's copy
    from flows.cli_models import format_info

    shown = format_info(gemma["int8"].as_dict())
    assert "268.10M (268,098,176); a stored second copy of a shared tensor (167,772,160)" in shown
    # without import_info.json the copy is found by dequantizing rows of the head
    int8 = real_model("smollm2-135m-instruct", "int8")
    bare = tmp_path / "no-info"
    bare.mkdir()
    for f in int8.iterdir():
        if f.name != "import_info.json":
            os.symlink(f, bare / f.name)
    assert inspect_model(bare).parameters == 134_515_008
    # an import that says the head is not tied keeps both
    untied = tmp_path / "untied"
    untied.mkdir()
    for f in bare.iterdir():
        os.symlink(f.resolve(), untied / f.name)
    info = json.loads((int8 / "import_info.json").read_text())
    (untied / "import_info.json").write_text(json.dumps({**info, "tie_word_embeddings": False}))
    assert inspect_model(untied).parameters == 134_515_008 + 49_152 * 576
    assert open_model_folder(untied).path == untied


def test_measuring_a_request_keeps_the_process_peak() -> None:
    """A request's peak comes from resetting the kernel's high-water mark; the process's
    whole-life peak (what a bench reads at the end of a run) is kept."""
    import mmap

    from planner.models.runtime import RssSampler, _peak_rss, process_peak_bytes, rss_bytes

    def touch(mb: int) -> mmap.mmap:  # fresh pages from the kernel, made resident
        block = mmap.mmap(-1, mb * 2**20)
        for offset in range(0, mb * 2**20, 4096):
            block[offset] = 1
        return block

    big = touch(300)
    high = rss_bytes()
    big.close()
    with RssSampler(baseline_bytes=rss_bytes()) as mem:
        touch(20).close()
    assert 15 < mem.peak_mb < 200  # this block's 20 MB, not the earlier 300
    assert _peak_rss() is not None and _peak_rss() < high - 200 * 2**20  # the kernel's was reset
    assert process_peak_bytes() > high - 2**20  # the process's is kept


def test_the_model_server_answers_503_to_a_request_that_does_not_fit_then_the_next() -> None:
    """Behind `serve-model --memory-limit-mb`, a request whose KV cache would not fit is refused
    before allocation with 503 insufficient_memory (the server is fine; a shorter request fits),
    in both modes, and the next request is answered."""
    import httpx

    from planner.models.engines import LocalEngine
    from planner.models.server import ServerThread, create_app

    folder = real_model("smollm2-135m-instruct", "int4")
    engine = LocalEngine(folder, model_name="smol", memory_limit_mb=300)
    with ServerThread(create_app(engine)) as server:
        url = f"{server.base_url}/chat/completions"
        for stream in (False, True):
            body = {"model": "smol", "messages": CAPITAL, "max_tokens": 8000, "stream": stream}
            resp = httpx.post(url, json=body, timeout=120)
            assert resp.status_code == 503, resp.text
            error = resp.json()["error"]
            assert error["code"] == "insufficient_memory"
            assert str(folder) in error["message"] and "lower max_new_tokens" in error["message"]
        small = httpx.post(
            url, json={"model": "smol", "messages": CAPITAL, "max_tokens": 8}, timeout=120
        )
    engine.close()
    assert small.status_code == 200
    assert small.json()["usage"]["completion_tokens"] == 8
