"""Scorers on hand-made answers whose right score is known; the judge over a real HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from planner.errors import AuthError
from planner.evaluate.scoring import (
    Asked,
    JudgeCache,
    JudgeSetup,
    ScoreItem,
    field_f1,
    final_answer,
    judge_messages,
    parse_verdict,
    rouge_l,
    score_item,
    score_items,
    token_f1,
)


def quality(
    task_type: str, reference: str, candidate: str, judge: JudgeSetup | None = None
) -> tuple[float, str]:
    scores = score_item(
        ScoreItem("r1", task_type, reference, candidate, ({"role": "user", "content": "q"},)), judge
    )
    first = scores[0]
    assert first.metric == "quality" and first.replay_id == "r1"
    return first.value, first.scorer


def test_token_f1_and_rouge_l_known_values() -> None:
    assert token_f1("the cat sat on the mat", "cat sat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("", "") == 1.0
    assert token_f1("alpha", "") == 0.0
    # LCS "a c" of "a b c" and "a c d": P = 2/3, R = 2/3
    assert rouge_l("a b c", "a c d") == pytest.approx(2 / 3)
    # non-ASCII words are tokens too (rouge-score's default tokenizer would drop them)
    assert rouge_l("à demain", "à demain") == 1.0
    assert token_f1("日本 東京", "日本 大阪") == pytest.approx(0.5)


def test_classification_label_match_normalizes() -> None:
    assert quality("classification", "billing", "Billing.") == (1.0, "label_match")
    assert (
        quality("classification", "billing", "  BILLING\nbecause the ticket mentions an invoice")[0]
        == 1.0
    )
    assert quality("classification", "billing", "technical")[0] == 0.0
    assert quality("classification", "billing", "not billing")[0] == 0.0


def test_extraction_field_f1_on_json() -> None:
    ref = json.dumps(
        {"name": "Ann Lee", "email": "ann@acme.example", "company": "Acme", "city": "Oslo"}
    )
    same = (
        '```json\n{"city": "oslo", "company": "Acme", "email": "ann@acme.example", '
        '"name": "ann  lee"}\n```'
    )
    assert quality("extraction", ref, same) == (1.0, "json_field_f1")
    # 3 of 4 fields right, nothing extra: P = 1, R = 3/4 -> F1 = 6/7
    three = json.dumps({"name": "Ann Lee", "email": "ann@acme.example", "company": "Acme"})
    assert quality("extraction", ref, three)[0] == pytest.approx(6 / 7)
    assert quality("extraction", ref, "Name: Ann Lee, city Oslo") == (
        0.0,
        "json_field_f1 (candidate not JSON)",
    )
    # production did not answer JSON: token F1 stands in, and the scorer says so
    value, scorer = quality("extraction", "Ann Lee, Oslo", "Ann Lee, Oslo")
    assert (value, scorer) == (1.0, "token_f1 (answer not JSON)")
    # list order does not matter; nested paths do
    assert (
        field_f1({"tags": ["a", "b"], "x": {"y": 1}}, {"x": {"y": 1.0}, "tags": ["b", "a"]}) == 1.0
    )
    assert field_f1({"x": {"y": 1}}, {"x": {"y": 2}}) == 0.0


def test_reasoning_final_answer() -> None:
    ref = (
        "Cost of 7 apples at $3 each: 7 x 3 = 21. Minus the $5 voucher: 21 - 5 = 16. "
        "The answer is 16."
    )
    assert final_answer(ref) == 16.0
    assert quality("reasoning", ref, "7*3=21, 21-5 leaves 16.") == (1.0, "final_answer")
    assert quality("reasoning", ref, "The answer is 16.0") == (1.0, "final_answer")
    assert quality("reasoning", ref, "#### 1,016")[0] == 0.0
    assert quality("reasoning", ref, "I cannot tell.")[0] == 0.0
    assert final_answer(r"so \boxed{42} it is") == 42.0
    assert final_answer("Final answer: Paris.") == "paris"
    # no final answer in production's answer: similarity, and the scorer says so
    value, scorer = quality(
        "reasoning", "because the sky scatters blue light", "because the sky scatters blue light"
    )
    assert (value, scorer) == (1.0, "similarity (no final answer in reference)")


def test_code_parses_and_similarity() -> None:
    ref = "```python\ndef add(a, b):\n    return a + b\n```"
    assert quality("code", ref, ref) == (1.0, "code: python ast + similarity")
    broken = "```python\ndef add(a, b):\n    return a +\n```"
    value, _ = quality("code", ref, broken)
    # does not parse (0.3 lost); similarity: ROUGE-L 12/13 and token F1 8/9 ("a" is dropped as
    # an article), so quality = 0.7 * (12/13 + 8/9) / 2
    assert value == pytest.approx(0.7 * (12 / 13 + 8 / 9) / 2)
    scores = score_item(ScoreItem("r", "code", ref, broken))
    assert {s.metric: s.value for s in scores}["code_parses"] == 0.0
    js = "```javascript\nfunction add(a, b) { return a + b; }\n```"
    value, scorer = quality("code", js, js)
    assert value == 1.0 and scorer == "code: similarity (parse skipped: javascript)"


def test_similarity_types_and_open_types_without_judge() -> None:
    value, scorer = quality("summarization", "the cat sat on the mat", "the cat sat")
    assert scorer == "rouge_l+token_f1" and value == pytest.approx(2 / 3)
    metrics = {s.metric for s in score_item(ScoreItem("r", "closed_qa", "1998", "1998"))}
    assert metrics == {"quality", "rouge_l", "token_f1"}
    assert quality("chatbot", "hello there friend", "hello there friend") == (
        1.0,
        "similarity (no judge)",
    )
    assert quality("some_new_type", "x y", "x y") == (1.0, "rouge_l+token_f1")


def test_scores_stay_within_unit_interval() -> None:
    for task in ("classification", "extraction", "reasoning", "code", "rewrite", "brainstorming"):
        for ref, cand in (("", ""), ("a", ""), ("", "b"), ("{}", "[]"), ("1", "2")):
            for s in score_item(ScoreItem("r", task, ref, cand)):
                assert 0.0 <= s.value <= 1.0, (task, ref, cand, s)


def test_parse_verdict_is_strict() -> None:
    assert parse_verdict("A") == "A"
    assert parse_verdict(" tie. ") == "TIE"
    assert parse_verdict("b\n") == "B"
    for loose in ("A is better", "Answer: A", "A or B", "", "**A**", "AB"):
        assert parse_verdict(loose) is None


def preferring(word: str, calls: list[list[dict[str, Any]]]) -> Any:
    """A judge that prefers whichever answer contains ``word`` (ties when both or neither do)."""

    def complete(messages: list[dict[str, Any]]) -> str:
        calls.append(messages)
        user = messages[-1]["content"]
        a = user.split("<<<ANSWER A\n", 1)[1].split("\nANSWER A>>>", 1)[0]
        b = user.split("<<<ANSWER B\n", 1)[1].split("\nANSWER B>>>", 1)[0]
        if (word in a) == (word in b):
            return "TIE"
        return "A" if word in a else "B"

    return complete


def judge_of(complete: Any, name: str = "jdg", **kw: Any) -> JudgeSetup:
    return JudgeSetup.from_function(complete, name=name, **kw)


def test_judge_asks_both_orders_and_keeps_ties_apart() -> None:
    calls: list[list[dict[str, Any]]] = []
    judge = judge_of(preferring("sunny", calls))
    value, scorer = quality("chatbot", "It is raining.", "It is sunny!", judge)
    assert (value, scorer) == (1.0, "judge:jdg both orders")  # production lost in both orders
    assert len(calls) == 2
    first, second = calls[0][-1]["content"], calls[1][-1]["content"]
    assert first.index("It is raining.") < first.index("It is sunny!")  # production shown first
    assert second.index("It is sunny!") < second.index("It is raining.")  # then candidate first
    assert quality("chatbot", "It is sunny.", "It is raining.", judge)[0] == 0.0
    # a tie is its own outcome: 0.5, never counted as a win
    scores = score_item(ScoreItem("r", "brainstorming", "a", "b"), judge)
    got = {s.metric: s.value for s in scores}
    assert got["quality"] == 0.5 and got["judge_preference"] == 0.5
    assert got["judge_order_flip"] == 0.0 and got["similarity"] == 0.0
    # a judge is only used for the types it is set up for
    assert quality("classification", "billing", "billing", judge)[1] == "label_match"


def test_position_bias_shows_as_order_flips() -> None:
    def first_is_better(messages: list[dict[str, Any]]) -> str:
        return "A"

    always_first = judge_of(first_is_better, name="biased")
    got = {s.metric: s.value for s in score_item(ScoreItem("r", "chatbot", "x", "y"), always_first)}
    assert got["quality"] == 0.5  # loses as B, wins as A: a tie, not a win
    assert got["judge_order_flip"] == 1.0  # the two orders disagree


def test_judge_unusable_replies_do_not_count() -> None:
    rambling = judge_of(lambda m: "Both answers have merit, but A is more concise.", name="j")
    value, scorer = quality("chatbot", "hello there", "hello there", rambling)
    assert (value, scorer) == (1.0, "similarity (judge reply unusable)")  # no outcome from it
    half = iter(["B", "I refuse"])
    one = judge_of(lambda m: next(half), name="j")
    assert quality("chatbot", "x", "y", one) == (1.0, "judge:j one order")

    def broken(messages: list[dict[str, Any]]) -> str:
        raise TimeoutError("read timed out")

    assert (
        quality("chatbot", "a b", "a b", judge_of(broken, name="j"))[1]
        == "similarity (judge reply unusable)"
    )

    def refused(messages: list[dict[str, Any]]) -> str:
        raise AuthError("judge", "401 from the relay; check RELAY_API_KEY")

    with pytest.raises(AuthError):
        quality("chatbot", "a", "b", judge_of(refused, name="j"))


def test_judge_cache_avoids_repeat_calls() -> None:
    store: dict[str, str] = {}
    calls: list[list[dict[str, Any]]] = []
    judge = judge_of(
        preferring("good", calls), name="j", cache=JudgeCache(store.get, store.__setitem__)
    )
    items = [
        ScoreItem(
            f"r{i}", "chatbot", "bad answer", "good answer", ({"role": "user", "content": "hi"},)
        )
        for i in range(3)
    ]
    first = score_items(items, judge)
    assert len(calls) == 2 and len(store) == 2  # same prompt, same comparison: asked once per order
    assert (first.judge_calls, first.judge_cached, first.judged) == (2, 0, 3)
    again = score_items(items, judge)
    assert len(calls) == 2 and again.judge_cached == 2
    assert [s.value for s in first.scores] == [s.value for s in again.scores]
    assert all(s.value == 1.0 for s in first.scores if s.metric == "quality")


def test_a_judge_that_stops_leaves_items_unscored_not_stood_in() -> None:
    """When the judge's budget (or circuit) stops it, the items it did not reach get no score,
    so a later run judges them; nothing is scored by a stand-in."""

    def ask(prompts: Any) -> Asked:
        answered = {key: "B" for key, _ in list(prompts)[:2]}  # only the first item's two orders
        return Asked(answered, "the judge's cost cap was reached", 0)

    judge = JudgeSetup(ask, name="j")
    items = [
        ScoreItem(f"r{i}", "chatbot", "p", f"c{i}", ({"role": "user", "content": f"q{i}"},))
        for i in range(3)
    ]
    out = score_items(items, judge)
    assert (out.judged, out.awaiting_judge) == (1, 2)
    assert {s.replay_id for s in out.scores} == {"r0"}
    assert out.judge_stopped == "the judge's cost cap was reached"


class _JudgeEngine:
    """A chat engine for the model server that judges like :func:`preferring` ('better' wins)."""

    model_name = "judge-model"

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        yield preferring("better", [])(messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def test_judge_through_a_relay_on_a_real_server() -> None:
    from planner.models.server import EchoEngine, ServerThread, create_app
    from planner.replay.completion import completion_function
    from planner.replay.relay import RelayBackend

    with ServerThread(create_app(_JudgeEngine())) as server:
        backend = RelayBackend("judge", server.base_url, "judge-model", max_retries=0)
        judge = judge_of(completion_function(backend, max_tokens=8, purpose="judge"), name="judge")
        value, scorer = quality("chatbot", "a fine answer", "a better answer", judge)
        assert (value, scorer) == (1.0, "judge:judge both orders")
        assert quality("chatbot", "the better one", "plain", judge)[0] == 0.0
    # an echoing server never answers A/B/TIE: strict parsing refuses it; it has no outcome
    with ServerThread(create_app(EchoEngine())) as server:
        backend = RelayBackend("echo", server.base_url, "echo", max_retries=0)
        value, scorer = quality(
            "chatbot",
            "same words",
            "same words",
            judge_of(completion_function(backend, max_tokens=8, purpose="judge"), name="echo"),
        )
        assert (value, scorer) == (1.0, "similarity (judge reply unusable)")


def test_judge_prompt_keeps_the_tail_of_long_conversations() -> None:
    long = [{"role": "user", "content": "x" * 10_000 + " LAST-WORDS"}]
    content = judge_messages(long, "a", "b")[1]["content"]
    assert "LAST-WORDS" in content and len(content) < 7_000
