"""Chat templates real folders ship, rendered as Hugging Face renders them: multi-turn messages,
system prompts, content parts, null fields, BOS from the template, and the token that ends an
assistant turn (which the runtime adds to its stop ids).

Templates: Qwen2.5-Instruct's and Llama 3.2 Instruct's (test data, see README), Phi-4-mini's
(the Phi-4-mini-shaped folder's own) and SmolLM2's ChatML (its folder's own)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer

from planner.models.folder import open_model_folder
from planner.models.runtime import PLAIN_TEMPLATE, end_of_turn_text, render_chat
from tests.conftest import real_model

DATA = Path(__file__).parent / "data"
CONVERSATION = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": "Hi", "name": None},
    {"role": "assistant", "content": "Hello!", "tool_calls": None, "function_call": None},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": " 2+2?"},
        ],
    },
]


def template(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_qwen25_multi_turn_with_system_and_content_parts() -> None:
    text = render_chat(template("qwen2.5-instruct.jinja"), CONVERSATION)
    assert text == (
        "<|im_start|>system\nBe brief. <|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # no system message: Qwen's own default one
    default = render_chat(template("qwen2.5-instruct.jinja"), CONVERSATION[1:2])
    assert default.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert end_of_turn_text(template("qwen2.5-instruct.jinja")) == "<|im_end|>"


def test_llama32_renders_bos_date_and_trimmed_turns() -> None:
    """Llama 3's template writes BOS itself (``bos_token``), a dated system header (it calls
    ``strftime_now``) and tests ``'tool_calls' in message``: a logged null must not count."""
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    before = time.strftime("%d %b %Y")
    text = render_chat(template("llama-3.2-instruct.jinja"), CONVERSATION, special_tokens=special)
    dates = {before, time.strftime("%d %b %Y")}
    assert any(
        text
        == (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
            "Be brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        for date in dates
    )
    assert end_of_turn_text(template("llama-3.2-instruct.jinja"), special) == "<|eot_id|>"
    # the template's own errors are TemplateErrors (a request's `runtime` error in the replay)
    two_calls = [{"role": "assistant", "content": "", "tool_calls": [{}, {}]}]
    with pytest.raises(TemplateError, match="single tool-calls"):
        render_chat(template("llama-3.2-instruct.jinja"), two_calls, special_tokens=special)


def test_phi4_mini_template_and_its_end_token_from_the_folder() -> None:
    folder = open_model_folder(real_model("phi4-mini-shape", "int4"))
    phi4 = folder.chat_template()
    assert phi4 is not None
    text = render_chat(phi4, CONVERSATION, special_tokens=folder.special_tokens())
    assert text == (
        "<|system|>Be brief. <|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
        "<|user|>What is 2+2?<|end|><|assistant|>"
    )
    end = end_of_turn_text(phi4, folder.special_tokens())
    assert end == "<|end|>"
    tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
    (end_id,) = tokenizer.encode(end, add_special_tokens=False).ids
    assert end_id in folder.config["model"]["eos_token_id"]  # 200020: the runtime stops there


def test_smollm2_chatml_default_system_prompt_and_end() -> None:
    folder = open_model_folder(real_model("smollm2-135m-instruct", "int4"))
    chatml = folder.chat_template()
    assert chatml is not None
    text = render_chat(chatml, [{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert end_of_turn_text(chatml) == "<|im_end|>"
    config = json.loads((folder.path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False  # ChatML opens with <|im_start|>: no BOS added


def test_a_template_without_an_end_token_has_none() -> None:
    assert end_of_turn_text(PLAIN_TEMPLATE) is None
    assert end_of_turn_text("{{ raise_exception('no') }}") is None
