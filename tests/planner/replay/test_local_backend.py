"""LocalBackend over real tiny onnxruntime-genai models: determinism, token counts, timings,
errors as data, batching, quantized variants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime_genai as og
import psutil
import pytest
from tokenizers import Tokenizer

from planner.errors import ModelFolderError
from planner.models.runtime import PLAIN_TEMPLATE, render_chat
from planner.models.tiny_tokenizer import CHAT_TEMPLATE
from planner.replay.local import LocalBackend
from planner.replay.protocol import ERROR_KINDS, ReplayBackend, ReplayRequest, ReplayResult

SYSTEM = {"role": "system", "content": "Classify the support ticket."}


def request(i: int, text: str = "", max_tokens: int = 12) -> ReplayRequest:
    content = text or f"Ticket {i}: the payment failed and I need help with my account"
    return ReplayRequest(f"r{i}", [SYSTEM, {"role": "user", "content": content}], max_tokens)


def run(backend: LocalBackend, requests: list[ReplayRequest]) -> list[ReplayResult]:
    results: list[ReplayResult] = []
    backend.replay(requests, results.append)
    return results


def bare_greedy_tokens(model_dir: Path, prompt: str, n: int) -> list[int]:
    """What onnxruntime-genai itself generates, with no harness around it."""
    model = og.Model(str(model_dir))
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    ids = tok.encode(prompt)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out: list[int] = []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def test_is_a_replay_backend(tiny_model_dir: Path) -> None:
    backend: ReplayBackend = LocalBackend("tiny", tiny_model_dir)  # mypy checks the protocol
    assert isinstance(backend, LocalBackend)
    assert backend.fingerprint().startswith("local-")
    assert backend.load_ms is None  # nothing loaded until the first replay
    backend.close()


def test_greedy_output_is_deterministic_across_runs(tiny_model_dir: Path) -> None:
    requests = [request(i) for i in range(4)]
    first = run(LocalBackend("a", tiny_model_dir), requests)
    second = run(LocalBackend("b", tiny_model_dir), requests)
    assert [r.output_text for r in first] == [r.output_text for r in second]
    assert [r.completion_tokens for r in first] == [r.completion_tokens for r in second]
    assert len({r.output_text for r in first}) > 1  # different prompts, different answers


def test_tokens_and_timings_are_counted_against_the_tokenizer(tiny_model_dir: Path) -> None:
    backend = LocalBackend("tiny", tiny_model_dir, max_new_tokens=64)
    req = request(1, max_tokens=10)
    (result,) = run(backend, [req])
    assert result.ok, result.error_message
    hf = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    prompt = render_chat(CHAT_TEMPLATE, req.messages)
    assert prompt.startswith("<|system|>\nClassify the support ticket.<|end|>\n<|user|>\n")
    assert prompt.endswith("<|end|>\n<|assistant|>\n")
    assert result.prompt_tokens == len(hf.encode(prompt).ids)
    expected = bare_greedy_tokens(tiny_model_dir, prompt, 10)
    # random tiny models never pick special tokens, so they never stop early
    specials = {hf.token_to_id(t) for t in ("<|end|>", "<|endoftext|>")}
    assert len(expected) == 10 and not set(expected) & specials
    assert result.completion_tokens == 10
    assert result.output_text == hf.decode(expected)
    assert result.ttft_ms is not None and result.latency_ms is not None
    assert 0 < result.ttft_ms < result.latency_ms
    assert result.tokens_per_s is not None and result.tokens_per_s > 0
    # the model's own memory: above what the process held before loading it
    assert result.peak_rss_mb is not None
    assert 0 < result.peak_rss_mb < psutil.Process().memory_info().rss / 2**20
    assert backend.load_ms is not None and backend.load_ms > 0
    stats = backend.stats()
    assert stats["chat_template"] is True and stats["context_length"] == 256


def test_max_tokens_is_respected_and_capped(tiny_model_dir: Path) -> None:
    backend = LocalBackend("tiny", tiny_model_dir, max_new_tokens=7)
    results = run(backend, [request(1, max_tokens=3), request(2, max_tokens=50)])
    assert [r.completion_tokens for r in results] == [3, 7]


def test_context_overflow_is_recorded_and_the_run_goes_on(tiny_model_dir: Path) -> None:
    long_text = "the payment failed and " * 200
    requests = [request(1), request(2, long_text), request(3)]
    results = run(LocalBackend("tiny", tiny_model_dir), requests)
    assert [r.request_id for r in results] == ["r1", "r2", "r3"]
    assert results[0].ok and results[2].ok
    overflow = results[1]
    assert overflow.error_kind == "context_overflow"
    assert overflow.error_kind in ERROR_KINDS
    assert overflow.prompt_tokens is not None and overflow.prompt_tokens > 256
    assert "256" in str(overflow.error_message)


def test_near_the_context_end_the_answer_is_cut_to_fit(tiny_model_dir: Path) -> None:
    backend = LocalBackend("tiny", tiny_model_dir, max_new_tokens=200)
    hf = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "the payment failed " * 15
    req = request(1, text, max_tokens=200)
    n_prompt = len(hf.encode(render_chat(CHAT_TEMPLATE, req.messages)).ids)
    assert 256 - 200 < n_prompt < 256
    (result,) = run(backend, [req])
    assert result.ok
    assert result.prompt_tokens == n_prompt
    assert result.completion_tokens == 256 - n_prompt


def test_empty_output_is_an_error_kind(eos_model_dir: Path) -> None:
    (result,) = run(LocalBackend("eos", eos_model_dir), [request(1)])
    assert result.error_kind == "empty_output"
    assert result.completion_tokens == 0
    assert result.output_text == ""
    assert result.ttft_ms is not None


def test_template_failure_is_a_runtime_error_of_that_sample(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "strict"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('tool messages are not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    bad = ReplayRequest("bad", [{"role": "tool", "content": "{}"}])
    results = run(LocalBackend("strict", folder), [bad, request(2)])
    assert results[0].error_kind == "runtime"
    assert "tool messages are not supported" in str(results[0].error_message)
    assert results[1].ok


def test_plain_fallback_template_without_chat_template(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    req = request(1)
    backend = LocalBackend("plain", folder)
    (result,) = run(backend, [req])
    prompt = render_chat(PLAIN_TEMPLATE, req.messages)
    assert prompt == (
        f"System: Classify the support ticket.\n\nUser: {req.messages[1]['content']}\n\nAssistant:"
    )
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert result.prompt_tokens == len(hf.encode(prompt).ids)
    assert backend.stats()["chat_template"] is False


def test_content_parts_are_flattened(tiny_model_dir: Path) -> None:
    parts = [{"type": "text", "text": "Ticket 1: "}, {"type": "text", "text": "refund please"}]
    as_parts = ReplayRequest("p", [{"role": "user", "content": parts}])
    as_text = ReplayRequest("t", [{"role": "user", "content": "Ticket 1: refund please"}])
    a, b = run(LocalBackend("tiny", tiny_model_dir), [as_parts, as_text])
    assert a.output_text == b.output_text and a.prompt_tokens == b.prompt_tokens


def test_batched_generation_gives_the_same_answers(tiny_model_dir: Path) -> None:
    requests = [request(9, "the payment failed and " * 200)] + [
        request(i, "word " * (3 * (5 - i) + 1), max_tokens=5 + i) for i in range(5)
    ]
    single = {r.request_id: r for r in run(LocalBackend("one", tiny_model_dir), requests)}
    batched_list = run(LocalBackend("batch", tiny_model_dir, batch_size=3), requests)
    batched = {r.request_id: r for r in batched_list}
    assert sorted(batched) == sorted(single)
    assert {k: r.output_text for k, r in batched.items()} == {
        k: r.output_text for k, r in single.items()
    }
    assert [batched[f"r{i}"].completion_tokens for i in range(5)] == [5, 6, 7, 8, 9]
    # the overflow is known before any generation; then short prompts first, in batches
    assert [r.request_id for r in batched_list] == ["r9", "r4", "r3", "r2", "r1", "r0"]
    assert batched["r9"].error_kind == "context_overflow"
    assert batched["r4"].ttft_ms == batched["r3"].ttft_ms == batched["r2"].ttft_ms
    assert batched["r1"].ttft_ms == batched["r0"].ttft_ms != batched["r2"].ttft_ms


def test_should_stop_ends_the_replay(tiny_model_dir: Path) -> None:
    results: list[ReplayResult] = []
    backend = LocalBackend("tiny", tiny_model_dir)
    backend.replay(
        [request(i) for i in range(5)], results.append, should_stop=lambda: len(results) >= 2
    )
    assert [r.request_id for r in results] == ["r0", "r1"]


@pytest.mark.parametrize("variant", ["tiny_int8_dir", "tiny_int4_dir"])
def test_quantized_variants_load_and_run(
    variant: str, request_fixture: pytest.FixtureRequest
) -> None:
    folder = request_fixture.getfixturevalue(variant)
    results = run(LocalBackend(variant, folder), [request(1), request(2)])
    assert all(r.ok for r in results), [r.error_message for r in results]
    assert all(r.completion_tokens == 12 for r in results)
    again = run(LocalBackend(variant, folder), [request(1)])
    assert again[0].output_text == results[0].output_text


@pytest.fixture
def request_fixture(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


def test_sampling_is_seeded_and_changes_the_fingerprint(tiny_model_dir: Path) -> None:
    hot = ReplayRequest("h", [{"role": "user", "content": "Ticket: refund"}], 12, temperature=1.0)
    first = run(LocalBackend("s", tiny_model_dir, greedy=False, seed=5), [hot])
    second = run(LocalBackend("s", tiny_model_dir, greedy=False, seed=5), [hot])
    greedy = run(LocalBackend("g", tiny_model_dir), [hot])
    assert first[0].output_text == second[0].output_text
    assert first[0].output_text != greedy[0].output_text
    assert (
        LocalBackend("s", tiny_model_dir, greedy=False, seed=5).fingerprint().endswith("-sampled5")
    )


def test_bad_folder_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"missing genai_config\.json"):
        LocalBackend("none", tmp_path)
