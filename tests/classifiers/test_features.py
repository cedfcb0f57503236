"""request_text: the one deterministic string the ONNX model reads."""

from __future__ import annotations

import pytest

from classifiers import STRUCTURE_MARKERS, Lexicon, request_text
from classifiers.features import given_context_chars, normalize


def user(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": text}]


def markers(text: str) -> list[str]:
    return text.split(" | ")[0].split()


def test_structure_markers_of_a_multi_turn_request_with_code_and_json() -> None:
    messages = [
        {"role": "system", "content": "You review code."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": 'Why does this fail?\n```python\nx = {"a": 1}\nprint(x["b"])\n```',
        },
    ]
    m = markers(request_text(messages))
    for expected in (
        "__turns2__",
        "__history__",
        "__sys__",
        "__codeblock__",
        "__json__",
        "__lines2__",
        "__kw_code__",
    ):
        assert expected in m
    assert "__nosys__" not in m


def test_single_short_question_without_system_prompt() -> None:
    m = markers(request_text(user("What is the capital of Peru?")))
    assert m[:5] == ["__turns1__", "__nosys__", "__len0__", "__lines1__", "__question__"]
    assert "__ctx0__" in m and "__kw_open_qa__" in m
    assert all(x in STRUCTURE_MARKERS for x in m if not x.startswith("__kw_"))


def test_text_is_lowercase_single_spaced_and_clipped() -> None:
    long = "Summarize:\n\n" + "Word  \t" * 400 + "THE END"
    text = request_text(user(long, system="SYSTEM\nPrompt"))
    assert "  " not in text
    assert text == text.lower()
    assert "\n" not in text and "\t" not in text
    assert " ... " in text and text.endswith("the end")
    assert "| system prompt |" in text
    assert len(text) < 1100


def test_control_characters_and_lone_surrogates_become_safe_text() -> None:
    text = request_text(user("bad\x00char\ud800here\u2028next\u00a0nbsp"))
    assert "\x00" not in text and "\ud800" not in text
    text.encode("utf-8")  # would raise on a surrogate
    assert "bad char?here next nbsp" in text


def test_empty_system_prompt_leaves_no_double_space() -> None:
    assert " | | " in request_text(user("hello"))
    assert "  " not in request_text([{"role": "user", "content": ""}])


def test_content_parts_contribute_their_text() -> None:
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Translate this"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        }
    ]
    assert "translate this" in request_text(parts)


def test_deterministic() -> None:
    msgs = user("Résume ce texte : « café »", system="Tu es utile.")
    assert request_text(msgs) == request_text([dict(m) for m in msgs])


def test_lexicon_semantics_prefix_whole_word_phrase_and_cjk() -> None:
    lex = Lexicon({"a": ["summar*", "gist"], "b": ["step by step", "总结"], "c": ["c++"]}, "t")
    assert lex.match("please summarize it") == ["a"]
    assert lex.match("summary") == ["a"]
    assert lex.match("legist") == []  # whole word only
    assert lex.match("resummarize") == []  # prefix must start the word
    assert lex.match("think step by step.") == ["b"]
    assert lex.match("steps by step") == []
    assert lex.match("请总结一下") == ["b"]
    assert lex.match("in c++ please") == ["c"]
    assert lex.match("gist, step by step") == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("What is 2+2?", 0, 19),
        ("Translate: good morning to everyone here", 20, 199),
        ("Summarize these notes:\n\n" + "x" * 500, 200, 999),
        ('Is this spam? "' + "y" * 30 + '"', 20, 40),
    ],
)
def test_given_context_length(text: str, low: int, high: int) -> None:
    assert low <= given_context_chars(text) <= high


def test_normalize() -> None:
    assert normalize("  A\tB\n\nC  ") == "a b c"
