"""Chat templates real folders ship, rendered as Hugging Face renders them: multi-turn messages,
system prompts, content parts, null fields, BOS from the template, and the token that ends an
assistant turn (which the runtime adds to its stop ids).

Templates: Qwen2.5-Instruct's and Phi-4-mini-instruct's (test data, see README), SmolLM2's
ChatML (its folder's own) and Llama 3's turn format (written here)."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_phi4_mini_template_and_its_end_token() -> None:
    phi4 = template("phi-4-mini-instruct.jinja")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    text = render_chat(phi4, CONVERSATION, special_tokens=special)
    assert text == (
        "<|system|>Be brief. <|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
        "<|user|>What is 2+2?<|end|><|assistant|>"
    )
    assert end_of_turn_text(phi4, special) == "<|end|>"


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


# Llama 3's turn format (header ids, <|eot_id|> after every turn), written for this test: the
# model's own tokenizer_config.json is under the Llama licence, so its template is not test data.
LLAMA3_FORMAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def test_llama3_turn_format_renders_bos_once_and_ends_turns_with_eot_id() -> None:
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    text = render_chat(LLAMA3_FORMAT, CONVERSATION, special_tokens=special)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert text.count("<|begin_of_text|>") == 1
    # the assistant's turn ends with <|eot_id|>, not the EOS <|end_of_text|>: it must be a stop id
    assert end_of_turn_text(LLAMA3_FORMAT, special) == "<|eot_id|>"
