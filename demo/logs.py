"""A seeded generator of realistic production chat logs, for the demo, tests and benchmarks.

The records follow the canonical chat-log format (ARCHITECTURE.md) and carry what real traffic
carries: a task mix, system prompts per product feature, multi-turn conversations logged one call
per turn with the full history, exact-repeat prompts, failed calls, human labels on a share of
records, and now and then credentials a careless client logged. Each record also has a ``_truth``
key (the task type it was generated as) so tests can measure a classifier on unlabeled records;
ingest ignores unknown top-level keys.

The answers are the "production" answers the replays are scored against. Simple types have short,
regular answers a tiny model can learn; reasoning and code do not.

The words requests are made of are data, in ``demo/vocabulary.json``, in two parts that share no
value: the demo models are fine-tuned on examples drawn from the ``train`` part
(:func:`task_examples`), the demo's logs are drawn from the ``eval`` part (:func:`generate_records`),
so the plan evaluates them on requests whose slots (names, companies, products, reviews, ...)
they never saw.

This module is long because each task type's templates are a function of their own here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

_VOCABULARY: dict[str, Any] = json.loads(
    resources.files("demo").joinpath("vocabulary.json").read_text("utf-8")
)
_MIX = _VOCABULARY["mix"]
_FEATURE = _VOCABULARY["feature"]
_CHAT_REPLIES = _VOCABULARY["chat_replies"]
PARTS = ("train", "eval")


@dataclass(frozen=True)
class Words:
    """One part of the vocabulary's request words: ``train`` (the demo models' fine-tuning
    examples) or ``eval`` (the demo's logs, what is replayed). The parts share no value."""

    first: list[str]
    last: list[str]
    company: list[str]
    city: list[str]
    product: list[str]
    topic: list[str]
    positive: list[str]
    negative: list[str]
    neutral: list[str]
    tickets: dict[str, list[str]]
    polite: list[list[str]]
    french: dict[str, str]
    capitals: dict[str, str]
    openers: list[str]
    followups: list[str]

    @classmethod
    def part(cls, name: str) -> Words:
        if name not in PARTS:
            raise ValueError(f"unknown vocabulary part {name!r}; known: {', '.join(PARTS)}")
        v = _VOCABULARY
        return cls(
            *(
                v[key][name]
                for key in (
                    "first_names",
                    "last_names",
                    "companies",
                    "cities",
                    "products",
                    "topics",
                    "review_positive",
                    "review_negative",
                    "review_neutral",
                    "tickets",
                    "polite_rewrites",
                    "french",
                    "capitals",
                    "chat_openers",
                    "chat_followups",
                )
            )
        )


Messages = list[dict[str, Any]]
Example = tuple[str | None, str, str]  # (system prompt, user message, production answer)

TASK_TYPES: tuple[str, ...] = (
    "classification",
    "extraction",
    "summarization",
    "rewrite",
    "closed_qa",
    "open_qa",
    "brainstorming",
    "text_generation",
    "chatbot",
    "code",
    "reasoning",
)


def _name(rng: random.Random, w: Words) -> str:
    return f"{rng.choice(w.first)} {rng.choice(w.last)}"


def _email(name: str, company: str) -> str:
    first = name.split()[0].lower()
    domain = company.lower().replace(" ", "") + ".example"
    return f"{first}@{domain}"


def _classification(rng: random.Random, w: Words) -> Example:
    if rng.random() < 0.55:
        label = rng.choice(["positive", "negative", "neutral"])
        phrase = rng.choice(
            {"positive": w.positive, "negative": w.negative, "neutral": w.neutral}[label]
        )
        review = f"The {rng.choice(w.product)} {phrase}."
        system = "You label product reviews. Answer with one word: positive, negative or neutral."
        return system, f"Review: {review}\nSentiment:", label
    category = rng.choice(sorted(w.tickets))
    text = rng.choice(w.tickets[category])
    system = "You are an inbox triage assistant. Classify each support ticket as billing, technical or account. Reply with the category only."
    return system, f"Ticket: {text}", category


def _extraction(rng: random.Random, w: Words) -> Example:
    name, company = _name(rng, w), rng.choice(w.company)
    email = _email(name, company)
    city = rng.choice(w.city)
    text = rng.choice(
        [
            f"Hi, this is {name} from {company}. You can reach me at {email}. I'm based in {city}.",
            f"Please add {name} ({email}) of {company}, {city} office, to the mailing list.",
            f"New lead: {name}, works at {company} in {city}, contact {email}.",
        ]
    )
    system = "Extract contact details. Respond with JSON only, keys: name, email, company, city."
    answer = json.dumps(
        {"name": name, "email": email, "company": company, "city": city}, ensure_ascii=False
    )
    return system, f"Text: {text}", answer


def _summarization(rng: random.Random, w: Words) -> Example:
    team, topic = rng.choice(w.company), rng.choice(w.topic)
    owner, day = _name(rng, w), rng.choice(["Monday", "Wednesday", "Friday"])
    pct = rng.randint(5, 40)
    notes = (
        f"Meeting notes, {team}. The team discussed the {topic} initiative. Sales grew {pct} percent "
        f"last quarter. Several people raised concerns about the budget. {owner} will prepare a "
        f"proposal. Marketing asked for more time. The next review is on {day}. Coffee was cold."
    )
    answer = f"The team discussed the {topic} initiative; {owner} will prepare a proposal before the {day} review."
    return None, f"Summarize these notes in one sentence:\n\n{notes}", answer


def _rewrite(rng: random.Random, w: Words) -> Example:
    roll = rng.random()
    if roll < 0.4:
        rude, polite = rng.choice(w.polite)
        return (
            "You rewrite messages to sound polite and professional.",
            f"Rewrite politely: {rude}",
            polite,
        )
    if roll < 0.75:
        src, dst = rng.choice(sorted(w.french.items()))
        return None, f"Translate to French: {src}", dst
    sentence = f"the {rng.choice(w.product)} ships from {rng.choice(w.city)} tomorrow"
    return None, f"Rewrite in title case: {sentence}", sentence.title()


def _closed_qa(rng: random.Random, w: Words) -> Example:
    company, city = rng.choice(w.company), rng.choice(w.city)
    year, staff = rng.randint(1950, 2020), rng.randint(20, 900)
    context = (
        f"{company} was founded in {year} in {city}. It employs {staff} people and "
        f"sells {rng.choice(w.product)}s worldwide."
    )
    question, answer = rng.choice(
        [
            (f"When was {company} founded?", str(year)),
            (f"Where was {company} founded?", city),
            (f"How many people does {company} employ?", str(staff)),
        ]
    )
    system = "Answer using only the context. If the answer is not in the context, say 'unknown'."
    return system, f"Context: {context}\nQuestion: {question}", answer


def _open_qa(rng: random.Random, w: Words) -> Example:
    if rng.random() < 0.6:
        country, capital = rng.choice(sorted(w.capitals.items()))
        return None, f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    topic = rng.choice(w.topic)
    return (
        None,
        f"Why do people care about {topic}?",
        f"People care about {topic} because it affects their daily lives, their costs and "
        f"their communities; opinions differ on how to approach it.",
    )


def _brainstorming(rng: random.Random, w: Words) -> Example:
    product = rng.choice(w.product)
    n = rng.choice([3, 5])
    ideas = [
        f"{i + 1}. {idea}"
        for i, idea in enumerate(
            rng.sample(
                [
                    f"A short video showing the {product} in daily use",
                    "A referral discount for existing customers",
                    "A comparison chart against competitors",
                    "User testimonials on the landing page",
                    "A limited-time bundle offer",
                    "A social media challenge with a hashtag",
                    "A behind-the-scenes blog post",
                ],
                n,
            )
        )
    ]
    return (
        "You are a creative marketing assistant.",
        f"Brainstorm {n} ideas to promote our {product}.",
        "\n".join(ideas),
    )


def _text_generation(rng: random.Random, w: Words) -> Example:
    if rng.random() < 0.5:
        product = rng.choice(w.product)
        return (
            "You write vivid, concise product copy.",
            f"Write a product description for a {product}.",
            f"Meet the {product} you did not know you needed: thoughtfully designed, built to "
            f"last and a joy to use every day. Whether at home or on the go, it fits your life.",
        )
    topic = rng.choice(w.topic)
    return (
        None,
        f"Write a short poem about {topic}.",
        f"In quiet hours we think of {topic},\nof small steps taken, hope held high;\n"
        f"the world turns slowly, yet it turns,\nand we keep walking, you and I.",
    )


def _code(rng: random.Random, w: Words) -> Example:
    fn, body, task = rng.choice(
        [
            (
                "is_palindrome",
                "    s = ''.join(ch.lower() for ch in s if ch.isalnum())\n    return s == s[::-1]",
                "checks whether a string is a palindrome",
            ),
            (
                "fizzbuzz",
                "    return ['FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else str(i) for i in range(1, n + 1)]",
                "returns the FizzBuzz sequence up to n",
            ),
            (
                "word_count",
                "    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts",
                "counts the words in a text",
            ),
            (
                "flatten",
                "    out = []\n    for item in items:\n        out.extend(flatten(item) if isinstance(item, list) else [item])\n    return out",
                "flattens a nested list",
            ),
        ]
    )
    arg = {"is_palindrome": "s", "fizzbuzz": "n", "word_count": "text", "flatten": "items"}[fn]
    answer = f"```python\ndef {fn}({arg}):\n{body}\n```"
    return (
        "You are a senior Python developer. Answer with code only.",
        f"Write a Python function `{fn}` that {task}.",
        answer,
    )


def _reasoning(rng: random.Random, w: Words) -> Example:
    a, b, c = rng.randint(3, 19), rng.randint(2, 9), rng.randint(2, 30)
    item = rng.choice(["apples", "tickets", "notebooks", "cables"])
    total = a * b - c
    question = (
        f"A shop sells {item} at ${b} each. Ana buys {a} {item} and pays with a voucher "
        f"worth ${c}. How much does she pay in cash? Think step by step."
    )
    answer = (
        f"Cost of {a} {item} at ${b} each: {a} x {b} = {a * b}. Minus the ${c} voucher: "
        f"{a * b} - {c} = {total}. The answer is {total}."
    )
    return None, question, answer


_TEMPLATES: dict[str, Callable[[random.Random, Words], Example]] = {
    "classification": _classification,
    "extraction": _extraction,
    "summarization": _summarization,
    "rewrite": _rewrite,
    "closed_qa": _closed_qa,
    "open_qa": _open_qa,
    "brainstorming": _brainstorming,
    "text_generation": _text_generation,
    "code": _code,
    "reasoning": _reasoning,
}


def _chat_conversation(rng: random.Random, w: Words, turns: int) -> list[Example]:
    """A companion-chat conversation: each turn is (system, user, answer)."""
    system = "You are Sunny, a cheerful companion. Keep answers short and kind."
    out: list[Example] = [(system, rng.choice(w.openers), rng.choice(_CHAT_REPLIES))]
    for _ in range(turns - 1):
        out.append((system, rng.choice(w.followups), rng.choice(_CHAT_REPLIES)))
    return out


def task_examples(
    task_type: str, n: int, seed: int = 0, part: str = "train"
) -> list[tuple[Messages, str]]:
    """``n`` (messages, production answer) pairs of one task type, for training demo models:
    drawn from the vocabulary's ``train`` part, so the demo's logs (``eval``) hold requests
    whose slots the models never saw."""
    rng, w = random.Random(f"{seed}:{task_type}"), Words.part(part)
    out: list[tuple[Messages, str]] = []
    for _ in range(n):
        if task_type == "chatbot":
            system, user, answer = _chat_conversation(rng, w, 1)[0]
        elif task_type in _TEMPLATES:
            system, user, answer = _TEMPLATES[task_type](rng, w)
        else:
            raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
        out.append((_messages(system, [(user, None)]), answer))
    return out


def _messages(system: str | None, turns: list[tuple[str, str | None]]) -> Messages:
    msgs: Messages = [{"role": "system", "content": system}] if system else []
    for user, answer in turns:
        msgs.append({"role": "user", "content": user})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
    return msgs


def _tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


def _record(
    rng: random.Random,
    idx: int,
    ts: datetime,
    task: str,
    messages: Messages,
    answer: str,
    conversation_id: str | None,
    label_share: float,
    failed_share: float,
) -> dict[str, Any]:
    model = "gpt-4.1" if rng.random() < 0.85 else "gpt-4.1-mini"
    prompt_tokens = sum(_tokens(str(m["content"])) + 4 for m in messages)
    completion_tokens = _tokens(answer)
    ttft = rng.uniform(180, 650)
    latency = ttft + completion_tokens * rng.uniform(9, 22)
    rec: dict[str, Any] = {
        "id": f"req-{idx:07d}",
        "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request": {
            "model": model,
            "messages": messages,
            "temperature": 0.2,
            "max_tokens": 512 if task in ("code", "text_generation") else 256,
        },
        "status_code": 200,
        "latency_ms": round(latency, 1),
        "ttft_ms": round(ttft, 1),
        "user": f"u-{rng.randint(1, 400)}",
        "metadata": {"feature": _FEATURE[task]},
        "_truth": task,
    }
    if conversation_id:
        rec["conversation_id"] = conversation_id
    if rng.random() < label_share:
        rec["metadata"]["task_type"] = task
    if rng.random() < 0.01:  # a careless client logged its credentials
        rec["request"]["api_key"] = f"sk-demo-{rng.getrandbits(64):016x}"
        rec["metadata"]["headers"] = {"Authorization": f"Bearer sk-demo-{rng.getrandbits(64):016x}"}
    if rng.random() < failed_share:
        code = rng.choice([429, 500, 503])
        rec["status_code"] = code
        rec["error"] = {
            "type": "rate_limit_error" if code == 429 else "server_error",
            "message": "Rate limit reached" if code == 429 else "The server had an error",
        }
        rec["latency_ms"] = round(rng.uniform(20, 300), 1)
        rec.pop("ttft_ms")
        return rec
    rec["response"] = {
        "id": f"chatcmpl-{rng.getrandbits(48):012x}",
        "model": f"{model}-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return rec


def generate_records(
    n: int,
    seed: int = 0,
    *,
    label_share: float = 0.4,
    failed_share: float = 0.02,
    start: datetime = datetime(2026, 11, 12, tzinfo=UTC),
    part: str = "eval",
) -> list[dict[str, Any]]:
    """``n`` chat-log records over a week of traffic; the same seed gives the same records.
    Their request words come from the vocabulary's ``eval`` part, which the demo models never
    trained on."""
    rng, w = random.Random(seed), Words.part(part)
    types, weights = list(_MIX), list(_MIX.values())
    out: list[dict[str, Any]] = []
    repeats: list[tuple[str, Messages, str]] = []
    while len(out) < n:
        # Traffic follows the working day: more requests 08:00-18:00 UTC.
        day = rng.randrange(7)
        hour = rng.choice(range(8, 18)) if rng.random() < 0.7 else rng.randrange(24)
        ts = start + timedelta(
            days=day, hours=hour, seconds=rng.randrange(3600), milliseconds=rng.randrange(1000)
        )
        task = rng.choices(types, weights)[0]
        if task == "chatbot" or (task == "open_qa" and rng.random() < 0.3):
            turns = (
                _chat_conversation(rng, w, rng.choice([1, 2, 3, 3, 4, 5]))
                if task == "chatbot"
                else [
                    _TEMPLATES["open_qa"](rng, w),
                    (
                        None,
                        "Can you say more?",
                        "Sure: it depends on local context and on who you ask.",
                    ),
                ]
            )
            conv = f"c-{seed}-{len(out)}"
            history: list[tuple[str, str | None]] = []
            for system, user, answer in turns:
                msgs = _messages(system, [*history, (user, None)])
                out.append(
                    _record(
                        rng,
                        len(out),
                        ts,
                        task,
                        msgs,
                        answer,
                        conv if rng.random() < 0.8 else None,
                        label_share,
                        failed_share,
                    )
                )
                history.append((user, answer))
                ts += timedelta(seconds=rng.randint(5, 120))
                if len(out) >= n:
                    break
            continue
        if repeats and rng.random() < 0.06:  # the same prompt again (what a cache would save)
            task, msgs, answer = rng.choice(repeats)
        else:
            system, user, answer = _TEMPLATES[task](rng, w)
            msgs = _messages(system, [(user, None)])
            if task == "classification" and len(repeats) < 50:
                repeats.append((task, msgs, answer))
        out.append(_record(rng, len(out), ts, task, msgs, answer, None, label_share, failed_share))
    return out[:n]


def true_task_type(record: dict[str, Any]) -> str:
    """The task type a generated record was made as (its ground truth)."""
    return str(record["_truth"])


# Lines a real log pipeline produces now and then; each must end up in rejected_lines.
MALFORMED_LINES: tuple[bytes, ...] = (
    b"this is not json",
    b'{"id": "req-trunc", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": [',
    b'{"timestamp": "2026-11-19T08:15:02Z", "request": {"messages": [{"role": "user", "content": "no id"}]}}',
    b'{"id": "req-nots", "request": {"messages": [{"role": "user", "content": "no timestamp"}]}}',
    b'{"id": "req-badts", "timestamp": "yesterday at noon", "request": {"messages": [{"role": "user", "content": "x"}]}}',
    b'{"id": "req-nomsg", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": []}}',
    b'{"id": "req-msgtype", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": "hello"}}',
    b'{"id": "req-latin1", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": [{"role": "user", "content": "caf\xe9"}]}}',
    b"[1, 2, 3]",
)


def write_chat_log(
    path: Path, n: int, seed: int = 0, *, malformed: int = 0, blank: int = 0, duplicates: int = 0
) -> int:
    """Write ``n`` generated records as chat-log JSONL (``.gz`` by suffix), then sprinkle in
    ``malformed`` bad lines, ``blank`` blank lines and ``duplicates`` repeated records at seeded
    positions. Returns the number of lines written."""
    import gzip

    rng = random.Random(seed + 1)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in generate_records(n, seed)]
    extra = [MALFORMED_LINES[i % len(MALFORMED_LINES)] for i in range(malformed)]
    extra += [b""] * blank
    extra += [lines[rng.randrange(len(lines))] for _ in range(duplicates)] if lines else []
    for line in extra:
        lines.insert(rng.randrange(len(lines) + 1), line)
    data = b"\n".join(lines) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return len(lines)


def write_openai_batch(
    input_path: Path, output_path: Path, n: int, seed: int = 0
) -> tuple[int, int]:
    """An OpenAI Batch API input/output pair of ``n`` requests, as the Batch API writes them:
    output lines in a different order, one request with no output line (expired) and one with an
    error. Returns (input lines, output lines)."""
    rng = random.Random(seed + 2)
    records = [
        r
        for r in generate_records(n * 2, seed + 7, failed_share=0.0)
        if r["request"]["messages"][-1]["role"] == "user"
    ][:n]
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        custom_id = f"request-{i + 1}"
        body = {k: v for k, v in rec["request"].items() if k != "api_key"}
        body["metadata"] = (
            {"task_type": rec["metadata"].get("task_type")}
            if "task_type" in rec["metadata"]
            else {}
        )
        inputs.append(
            {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
        if i == 1:
            continue  # no output: the batch expired before this request ran
        if i == 2:
            outputs.append(
                {
                    "id": f"batch_req_{i}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": "server_error", "message": "The model had an error"},
                }
            )
            continue
        resp = dict(
            rec["response"],
            object="chat.completion",
            created=int(
                datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
            ),
        )
        outputs.append(
            {
                "id": f"batch_req_{i}",
                "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": f"req_{i}", "body": resp},
                "error": None,
            }
        )
    rng.shuffle(outputs)
    input_path.parent.mkdir(parents=True, exist_ok=True)
    input_path.write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in inputs), encoding="utf-8"
    )
    output_path.write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in outputs), encoding="utf-8"
    )
    return len(inputs), len(outputs)
