"""The rules label obvious requests, and only those."""

from __future__ import annotations

import pytest

from classifiers import rule_label, rule_labels


def user(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("messages", "task_type"),
    [
        (user("Translate to German: where is the station?"), "rewrite"),
        (user("Rewrite this so it sounds friendlier: send the report now."), "rewrite"),
        (
            user("Summarize the following article in two sentences: The council met on Monday..."),
            "summarization",
        ),
        (
            user(
                "Context: The bridge opened in 2000 and is 8 km long.\nQuestion: When did it open?"
            ),
            "closed_qa",
        ),
        (
            user("Extract all the names and dates from this memo: Ana met Li on 3 May."),
            "extraction",
        ),
        (user("Classify this review as positive or negative: great phone"), "classification"),
        (user("Brainstorm ten names for a bakery."), "brainstorming"),
        (
            user(
                "A train travels 120 km in 2 hours; after a 30 minute stop it travels 60 km more in 1 hour. Think step by step: what is its average speed?"
            ),
            "reasoning",
        ),
        (user("Write a short poem about the sea."), "text_generation"),
        (user("Hi there! How are you today?"), "chatbot"),
        (user("Why does this fail?\n```python\nprint(x)\n```"), "code"),
        (user("Who was the first person to climb Everest?"), "open_qa"),
        (
            user("I need the sender", system="Extract the sender and date fields as JSON."),
            "extraction",
        ),
    ],
)
def test_obvious_cases(messages: list[dict[str, str]], task_type: str) -> None:
    match = rule_label(messages)
    assert match is not None
    assert match.task_type == task_type
    assert match.rule


@pytest.mark.parametrize(
    "messages",
    [
        user("Hmm, not sure what I want."),  # nothing obvious
        user("Summarize this and then translate it to French: ..."),  # two types agree on nothing
        user("What do you think I should cook tonight?"),  # personal question: not a fact question
        [
            *user("Hello!"),
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Translate 'cat' to Spanish"},
        ],  # a follow-up turn
    ],
)
def test_not_obvious_means_no_label(messages: list[dict[str, str]]) -> None:
    assert rule_label(messages) is None


def test_rule_labels_keep_the_rule_names() -> None:
    out = rule_labels([("a", user("Translate to French: hello")), ("b", user("hmm"))])
    assert out == [("a", "rewrite", "translate")]
