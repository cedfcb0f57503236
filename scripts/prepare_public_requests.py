"""Turn public labeled request data into the classifier bench's JSONL (one request per line).

Each line: {"source", "group", "task_type", "lang", "messages"} where ``group`` is what a grouped
split keeps together (one template, task file or seed question) and ``task_type`` the source's own
category mapped onto the project's taxonomy by the table below. Requests whose category has no
clear task type are left out, never guessed. Run with the folders of the sources (git checkouts or
exported trees); see README "Benchmarks" for the sources, licences and mapping.

    python scripts/prepare_public_requests.py --out bench/data/public_requests.jsonl.gz \
        --instructlab DIR --gpteacher DIR --gsm8k DIR --arena-hard DIR --self-instruct DIR \
        --instructwild DIR --belle DIR --alignbench DIR --moss DIR

InstructLab: a checkout of instructlab/taxonomy at commit a7db9bd (its head has since emptied
the skill folders). AlignBench: a checkout of THUDM/AlignBench (measured at commit 5b79d4a; its
repository states no licence: read for evaluation only, nothing of it is committed). MOSS: a
checkout of OpenLMLab/MOSS (measured at commit c810e0b; data CC BY-NC 4.0). A source
missing from the command line is skipped. Also writes ``chat_mix.jsonl.gz`` (unlabeled real user
prompts: InstructionWild v2 + Arena-Hard v0.1) beside ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Row = dict[str, Any]

# instructlab/taxonomy: folder (below compositional_skills/ or foundational_skills/) -> task type
INSTRUCTLAB = {
    "writing/freeform/brainstorming": "brainstorming",
    "writing/freeform": "text_generation",
    "writing/grounded/summarization": "summarization",
    "writing/grounded/editing": "rewrite",
    "linguistics/summarization": "summarization",
    "linguistics/classification": "classification",
    "extraction/information": "extraction",
    "extraction/technical_paper": "extraction",
    "extraction/receipt": "extraction",
    "extraction/invoice": "extraction",
    "extraction/email": "extraction",
    "extraction/fda_filing": "extraction",
    "extraction/annual_report": "extraction",
    "extraction/commercial_lease_agreement": "extraction",
    "STEM/math": "reasoning",
    "reasoning": "reasoning",
}
INSTRUCTWILD = {
    "open qa": "open_qa",
    "chat": "chatbot",
    "brainstorming": "brainstorming",
    "rewrite": "rewrite",
    "closed qa": "closed_qa",
    "summarization": "summarization",
    "classification": "classification",
}  # 'Generation' (stories and code alike) and 'Other' are left out
BELLE = {
    "open qa": "open_qa",
    "brainstorming": "brainstorming",
    "rewrite": "rewrite",
    "generation": "text_generation",
    "math": "reasoning",
    "classification": "classification",
    "closed qa": "closed_qa",
    "summarization": "summarization",
    "code": "code",
    "extract": "extraction",
}
ARENA = {"coding": "code", "math": "reasoning", "creative_writing": "text_generation"}
# AlignBench v1.1 (THUDM/AlignBench): (category, subcategory) -> task type; a subcategory of None
# maps the whole category. Left out, never guessed: 中文理解 (Chinese understanding: couplets,
# idioms and typo fixes together), 综合问答/寻求建议 (advice: open QA or brainstorming), and the
# role-play subcategories 功能类 and 其他写作类 (their requests are writing and proofreading);
# 基本任务/文本分类 and 阅读理解 hold 1 and 2 requests, too few to measure a type by.
ALIGNBENCH = {
    ("专业能力", None): "open_qa",  # professional knowledge: history, physics, law...
    ("数学计算", None): "reasoning",
    ("逻辑推理", None): "reasoning",
    ("文本写作", None): "text_generation",
    ("基本任务", "信息抽取"): "extraction",
    ("基本任务", "常识知识"): "open_qa",
    ("基本任务", "翻译"): "rewrite",  # translation, as the taxonomy defines rewrite
    ("综合问答", "观点表达"): "open_qa",
    ("角色扮演", "现实生活类"): "chatbot",
    ("角色扮演", "游戏娱乐类"): "chatbot",
    ("角色扮演", "现实名人类"): "chatbot",
    ("角色扮演", "（虚拟）恋爱类"): "chatbot",
}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _row(source: str, group: str, task: str, text: str, lang: str = "en") -> Row:
    return {
        "source": source,
        "group": group,
        "task_type": task,
        "lang": lang,
        "messages": _user(text),
    }


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _lenient_jsonl(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            try:
                yield json.loads(re.sub(r"\\(?![\"\\/bfnrtu])", r"\\\\", line))
            except json.JSONDecodeError:
                continue


def instructlab(root: Path) -> Iterator[Row]:
    for path in sorted(root.rglob("qna.yaml")):
        rel = path.parent.relative_to(root).as_posix()
        rel = re.sub(r"^(compositional|foundational)_skills/", "", rel)
        task = next(
            (t for k, t in INSTRUCTLAB.items() if rel == k or rel.startswith(k + "/")), None
        )
        if task is None:
            continue
        try:
            data = yaml.safe_load(path.read_text("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):  # early files of its history: other layouts
            continue
        for example in data.get("seed_examples") or []:
            question = str(example.get("question") or "").strip()
            context = str(example.get("context") or "").strip()
            if not question:
                continue
            text = f"{context}\n\n{question}" if context else question
            yield _row("instructlab", f"instructlab:{rel}", task, text)


def gpteacher(root: Path, per_file: int = 600) -> Iterator[Row]:
    files = {
        "Roleplay/roleplay-simple-deduped-roleplay-instruct.json": "chatbot",
        "Codegen/codegen-instruct.json": "code",
    }
    for name, task in files.items():
        items = json.loads((root / name).read_text("utf-8"))
        random.Random(0).shuffle(items)
        for item in items[:per_file]:
            text = str(item.get("instruction", "")).strip()
            extra = str(item.get("input", "")).strip()
            if extra:
                text = f"{text}\n\n{extra}"
            yield _row("gpteacher", f"gpteacher:{_hash(text)}", task, text)


def gsm8k_train(root: Path, n: int = 600) -> Iterator[Row]:
    lines = (root / "grade_school_math/data/train.jsonl").read_text("utf-8").splitlines()
    random.Random(0).shuffle(lines)
    for line in lines[:n]:
        question = json.loads(line)["question"].strip()
        yield _row("gsm8k_train", f"gsm8k:{_hash(question)}", "reasoning", question)


def arena_v2(root: Path) -> Iterator[Row]:
    text = (root / "data/arena-hard-v2.0/question.jsonl").read_text("utf-8")
    for item in _lenient_jsonl(text):
        task = ARENA.get(str(item.get("subcategory")))
        if task:
            prompt = str(item["prompt"])
            yield _row("arena_hard_v2", f"arena2:{item['uid']}", task, prompt)


def self_instruct_seed(root: Path) -> Iterator[Row]:
    for item in _lenient_jsonl((root / "data/seed_tasks.jsonl").read_text("utf-8")):
        if not item.get("is_classification"):
            continue
        for instance in item.get("instances", []):
            text = str(item["instruction"]).strip()
            if str(instance.get("input", "")).strip():
                text = f"{text}\n\n{instance['input'].strip()}"
            yield _row("self_instruct_seed", f"selfinstruct:{item['id']}", "classification", text)


def instructwild(root: Path) -> Iterator[Row]:
    text = (root / "data_v2/user_1.jsonl").read_text("utf-8")
    for item in _lenient_jsonl(text):
        task = INSTRUCTWILD.get(str(item.get("instruction_type", "")).lower())
        prompt = str(item.get("instruction", "")).strip()
        if task and prompt:
            yield _row("instructwild", f"instructwild:{_hash(prompt)}", task, prompt)


def belle(root: Path) -> Iterator[Row]:
    for item in _lenient_jsonl((root / "eval/eval_set.json").read_text("utf-8")):
        label = str(item.get("class", "")).replace("\xa0", " ").lower()
        task = BELLE.get(label)
        question = str(item.get("question", "")).strip()
        if task and question:
            yield _row("belle_eval", f"belle:{_hash(question)}", task, question, "zh")


# MOSS-003's helpful user prompts (OpenLMLab/MOSS SFT_data): category -> task type. Left out:
# complex_instruction (several tasks in one), and the harmless and honest sets (not task types).
MOSS = {
    "brainstorming": "brainstorming",
    "code": "code",
    "writing": "text_generation",
    "role_playing": "chatbot",
}
_HAN = re.compile(r"[\u4e00-\u9fff]")


def mostly_chinese(text: str) -> bool:
    """At least 30% of the non-space characters are Han: MOSS mixes English prompts in."""
    chars = re.sub(r"\s", "", text)
    return bool(chars) and len(_HAN.findall(chars)) / len(chars) >= 0.3


def moss(root: Path) -> Iterator[Row]:
    """The Chinese prompts of MOSS-003's helpful set: the user-prompt files and the first turn of
    each conversation (prompts its beta users sent, per its README)."""
    prompts = root / "SFT_data/user_prompts/helpful_prompts_without_plugins"
    chats = root / "SFT_data/conversations/conversation_without_plugins/helpful_conversations"
    for category, task in MOSS.items():
        texts: list[str] = []
        listed = (prompts / f"helpful_{category}_prompts.jsonl").read_text("utf-8")
        texts.extend(str(item.get("user_prompt", "")) for item in _lenient_jsonl(listed))
        for path in sorted((chats / f"helpful_{category}_conversations").glob("*.json")):
            turn = json.loads(path.read_text("utf-8"))["chat"]["turn_1"]["Human"]
            texts.append(re.sub(r"^<\|Human\|>:\s*", "", str(turn)).replace("<eoh>", ""))
        for text in (t.strip() for t in texts):
            if text and mostly_chinese(text):
                yield _row("moss", f"moss:{_hash(text[:60])}", task, text, "zh")


def alignbench(root: Path) -> Iterator[Row]:
    """Real users' questions to ChatGLM's online service (a few written by its researchers)."""
    for item in _lenient_jsonl((root / "data/data_v1.1_release.jsonl").read_text("utf-8")):
        category, sub = str(item.get("category")), str(item.get("subcategory"))
        task = ALIGNBENCH.get((category, sub)) or ALIGNBENCH.get((category, None))
        question = str(item.get("question", "")).strip()
        if task and question:
            # Each question is its own group; the first 60 characters join near-duplicates.
            yield _row("alignbench", f"alignbench:{_hash(question[:60])}", task, question, "zh")


def chat_mix(instructwild_root: Path | None, arena_root: Path | None) -> Iterator[Row]:
    if instructwild_root is not None:
        for name in ("user_1", "user_2", "user_3"):
            path = instructwild_root / f"data_v2/{name}.jsonl"
            for item in _lenient_jsonl(path.read_text("utf-8")):
                prompt = str(item.get("instruction", "")).strip()
                if prompt:
                    yield {"source": f"instructwild_{name}", "messages": _user(prompt)}
    if arena_root is not None:
        path = arena_root / "data/arena-hard-v0.1/question.jsonl"
        for item in _lenient_jsonl(path.read_text("utf-8")):
            prompt = item.get("prompt") or (item.get("turns") or [{}])[0].get("content")
            if prompt:
                yield {"source": "arena_hard_v0.1", "messages": _user(str(prompt))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    for name in (
        "instructlab",
        "gpteacher",
        "gsm8k",
        "arena-hard",
        "self-instruct",
        "instructwild",
        "belle",
        "alignbench",
        "moss",
    ):
        parser.add_argument(f"--{name}", type=Path)
    args = parser.parse_args()
    readers = [
        (args.instructlab, instructlab),
        (args.gpteacher, gpteacher),
        (args.gsm8k, gsm8k_train),
        (args.arena_hard, arena_v2),
        (args.self_instruct, self_instruct_seed),
        (args.instructwild, instructwild),
        (args.belle, belle),
        (args.alignbench, alignbench),
        (args.moss, moss),
    ]
    rows: list[Row] = []
    seen: set[str] = set()
    for root, reader in readers:
        if root is None:
            continue
        for row in reader(root):
            key = row["messages"][0]["content"]
            if key not in seen:
                seen.add(key)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    mix = list(chat_mix(args.instructwild, args.arena_hard))
    with gzip.open(args.out.parent / "chat_mix.jsonl.gz", "wt", encoding="utf-8") as handle:
        for row in mix:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = Counter((r["source"], r["task_type"]) for r in rows)
    for (source, task), n in sorted(counts.items()):
        print(f"{source:20} {task:16} {n}")
    print(f"{len(rows)} labeled requests; {len(mix)} chat-mix prompts")


if __name__ == "__main__":
    main()
