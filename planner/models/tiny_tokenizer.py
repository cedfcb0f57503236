"""A byte-level BPE tokenizer trained locally (no download) for the project's tiny models.

The files written are the Hugging Face layout onnxruntime-genai reads: ``tokenizer.json`` and
``tokenizer_config.json`` (which carries the chat template). Chat turns use Phi-style markers,
``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<|end|>``; generation stops at ``<|end|>``
or ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ENDOFTEXT = "<|endoftext|>"
END = "<|end|>"
SPECIAL_TOKENS = (ENDOFTEXT, "<|system|>", "<|user|>", "<|assistant|>", END)

# Phi-3 style; `messages[i].content` is a string (the caller flattens content parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

BUILTIN_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model runs on the device in your pocket.
Classify the support ticket as billing, technical or account. Reply with the category only.
Extract the name, email, company and city as JSON. Summarize these notes in one sentence.
Rewrite the sentence in a formal tone. Answer the question using only the context given.
Write a short poem about the sea. Brainstorm three ideas to promote our new product.
Write a Python function that counts the words in a text and returns a dictionary.
Think step by step: a shop sells apples at 3 dollars each; how much do 12 apples cost?
Hello! How can I help you today? Thank you, that was very helpful. Have a nice day.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024. Punctuation: , . ; : ! ? ( ) [ ] { } " ' -
"""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """Byte-level BPE over ``texts``: every byte is in the alphabet, so nothing is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def builtin_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A tokenizer trained on the built-in text (for random-weight test models)."""
    lines = BUILTIN_TEXT.splitlines()
    return train_tokenizer(lines * 4, vocab_size=vocab_size)


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {}
    for token in SPECIAL_TOKENS:
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer lacks the special token {token}")
        ids[token] = token_id
    return ids


def write_tokenizer(tok: Tokenizer, out_dir: Path, context_length: int) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` (with the chat template) into ``out_dir``."""
    tok.save(str(out_dir / "tokenizer.json"))
    ids = special_token_ids(tok)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": ENDOFTEXT,
        "eos_token": END,
        "pad_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(ids[token]): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token in SPECIAL_TOKENS
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
