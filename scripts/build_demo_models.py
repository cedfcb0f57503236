"""Trains the two demo edge models and writes them as onnxruntime-genai folders under models/.

    python3 -m venv .venv-build
    .venv-build/bin/pip install torch==2.13.0 -c constraints.txt \
        numpy tokenizers onnx onnxruntime onnx-ir onnxruntime-genai jinja2 psutil
    .venv-build/bin/python scripts/build_demo_models.py --out models

Both models are the decoder of ``planner/models/tiny.py`` (the PyTorch module below is the same
computation, weight for weight: a parity check compares the exported graph's logits with
PyTorch's before anything is written), trained from scratch on the demo's task templates
(``demo.logs.task_examples``) filled with the ``train`` part of ``demo/vocabulary.json``, with the
loss on the answer tokens only. The demo's logs are drawn from the ``eval`` part, which shares no
name, company, city, product, topic, review, ticket or phrase with it: the models are fine-tuned
on part of the team's traffic and evaluated on requests whose slots they never saw.

- ``edge-small`` (2 layers, hidden 64): classification, extraction, rewrite, closed QA.
- ``edge-base`` (3 layers, hidden 128): those plus summarization, open QA, chatbot,
  brainstorming, text generation and the multi-step reasoning template.

Neither sees code. Both learn the formats; the arithmetic of the reasoning template is beyond
them, so they answer it confidently and wrongly — the failure a migration plan must catch.
Each folder gets ``fp32``, ``int8`` (dynamic) and ``int4`` (MatMulNBits, block 32) variants and
a ``planner_model.json`` card with the training recipe and exact-match accuracy per task type
on requests of the ``eval`` part (slots never seen). Training is seeded and runs a fixed number
of steps (a few minutes each on 2 cores); PyTorch is needed only here, never at run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.logs import TASK_TYPES, task_examples  # noqa: E402
from planner.models.quantize import quantize_model_folder  # noqa: E402
from planner.models.runtime import render_chat  # noqa: E402
from planner.models.tiny import (  # noqa: E402
    LN_EPS,
    TinySpec,
    build_graph,
    rope_tables,
    write_model_folder,
)
from planner.models.tiny_tokenizer import CHAT_TEMPLATE, END, train_tokenizer  # noqa: E402
from planner.replay.local import LocalBackend  # noqa: E402
from planner.replay.protocol import ReplayRequest, ReplayResult  # noqa: E402

SIMPLE = ("classification", "extraction", "rewrite", "closed_qa")
BROADER = (
    *SIMPLE,
    "summarization",
    "open_qa",
    "chatbot",
    "brainstorming",
    "text_generation",
    "reasoning",
)


@dataclass(frozen=True)
class Recipe:
    name: str
    hidden: int
    layers: int
    heads: int
    tasks: tuple[str, ...]
    steps: int
    lr: float
    batch: int = 32
    per_type: int = 3000
    context_length: int = 256


RECIPES = (
    Recipe("edge-small", hidden=64, layers=2, heads=4, tasks=SIMPLE, steps=3000, lr=3e-3),
    Recipe("edge-base", hidden=128, layers=3, heads=4, tasks=BROADER, steps=4000, lr=2e-3),
)
VOCAB = 1024
TRAIN_SEED, EVAL_SEED = 101, 202


class TinyDecoder(nn.Module):
    """The planner/models/tiny.py architecture; parameter names are its weight names."""

    def __init__(self, spec: TinySpec) -> None:
        super().__init__()
        self.spec = spec
        h, f = spec.hidden, spec.ffn_size

        def p(*shape: int, std: float = 0.02) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * std)

        self.embed = p(spec.vocab_size, h)
        cos, sin = rope_tables(spec)
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)
        self.blocks = nn.ModuleList()
        for _ in range(spec.layers):
            block = nn.Module()
            block.ln1 = nn.LayerNorm(h, eps=LN_EPS)
            block.ln2 = nn.LayerNorm(h, eps=LN_EPS)
            block.wq, block.wk, block.wv = p(h, h), p(h, h), p(h, h)
            block.wo = p(h, h, std=0.02 / math.sqrt(2 * spec.layers))
            block.w1 = p(h, f)
            block.w2 = p(f, h, std=0.02 / math.sqrt(2 * spec.layers))
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(h, eps=LN_EPS)
        self.lm_head = p(h, spec.vocab_size)

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        nh, hd = self.spec.heads, self.spec.head_size
        cos, sin = self.cos[:t], self.sin[:t]

        def rotate(u: torch.Tensor) -> torch.Tensor:  # [b, nh, t, hd], rotate-half form
            a, c = u[..., : hd // 2], u[..., hd // 2 :]
            return torch.cat([a * cos - c * sin, c * cos + a * sin], dim=-1)

        x = self.embed[ids]
        for blk in self.blocks:
            hx = blk.ln1(x)
            q, k, v = (
                (hx @ w).view(b, t, nh, hd).transpose(1, 2) for w in (blk.wq, blk.wk, blk.wv)
            )
            att = F.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True)
            x = x + att.transpose(1, 2).reshape(b, t, -1) @ blk.wo
            x = x + F.silu(blk.ln2(x) @ blk.w1) @ blk.w2
        return self.ln_f(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(ids) @ self.lm_head

    def weights(self) -> dict[str, np.ndarray]:
        """The named weights ``planner.models.tiny.build_graph`` takes."""
        out = {"embed": self.embed}
        for i, blk in enumerate(self.blocks):
            pre = f"layers.{i}."
            out |= {
                pre + "ln1.weight": blk.ln1.weight,
                pre + "ln1.bias": blk.ln1.bias,
                pre + "attn.wq": blk.wq,
                pre + "attn.wk": blk.wk,
                pre + "attn.wv": blk.wv,
                pre + "attn.wo": blk.wo,
                pre + "ln2.weight": blk.ln2.weight,
                pre + "ln2.bias": blk.ln2.bias,
                pre + "mlp.w1": blk.w1,
                pre + "mlp.w2": blk.w2,
            }
        out |= {
            "ln_f.weight": self.ln_f.weight,
            "ln_f.bias": self.ln_f.bias,
            "lm_head": self.lm_head,
        }
        return {k: v.detach().numpy().astype(np.float32).copy() for k, v in out.items()}


def prompt_text(messages: list[dict]) -> str:
    return render_chat(CHAT_TEMPLATE, messages)


def encode_examples(tokenizer, examples, context_length):
    """(ids, first answer position) per example; too long ones are dropped."""
    end_id = tokenizer.token_to_id(END)
    out = []
    for messages, answer in examples:
        prompt = tokenizer.encode(prompt_text(messages)).ids
        target = [*tokenizer.encode(answer).ids, end_id]
        if len(prompt) + len(target) <= context_length:
            out.append((prompt + target, len(prompt)))
    return out


def batches(data, batch, rng):
    """Length-bucketed batches (little padding), in a seeded random order."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i][0]), rng.random()))
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    rng.shuffle(chunks)
    for chunk in chunks:
        width = max(len(data[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, i in enumerate(chunk):
            seq, start = data[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, start - 1 : len(seq) - 1] = torch.tensor(seq[start:])
        yield ids, labels


def train(recipe: Recipe, tokenizer, log) -> tuple[TinyDecoder, dict]:
    torch.manual_seed(TRAIN_SEED)
    rng = random.Random(TRAIN_SEED)
    spec = TinySpec(
        vocab_size=tokenizer.get_vocab_size(),
        hidden=recipe.hidden,
        layers=recipe.layers,
        heads=recipe.heads,
        context_length=recipe.context_length,
    )
    examples = [ex for t in recipe.tasks for ex in task_examples(t, recipe.per_type, TRAIN_SEED)]
    data = encode_examples(tokenizer, examples, recipe.context_length)
    model = TinyDecoder(spec)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    warmup = max(recipe.steps // 20, 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return recipe.lr * (step + 1) / warmup
        progress = (step - warmup) / max(recipe.steps - warmup, 1)
        return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    started = time.perf_counter()
    step, losses = 0, []
    while step < recipe.steps:
        for ids, labels in batches(data, recipe.batch, rng):
            if step >= recipe.steps:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            # the head only where there is something to learn (the answers): a third less work
            picked = labels != -100
            logits = model.hidden_states(ids)[picked] @ model.lm_head
            loss = F.cross_entropy(logits, labels[picked])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0 or step == recipe.steps:
                recent = sum(losses[-50:]) / len(losses[-50:])
                log(
                    f"  {recipe.name} step {step}/{recipe.steps} loss {recent:.3f} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
    info = {
        "steps": recipe.steps,
        "batch": recipe.batch,
        "lr": recipe.lr,
        "train_examples": len(data),
        "train_tasks": list(recipe.tasks),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
        "seed": TRAIN_SEED,
        "torch": torch.__version__,
    }
    return model, info


def check_parity(model: TinyDecoder, tokenizer, examples) -> float:
    """Largest |logit difference| between PyTorch and the exported ONNX graph."""
    import onnxruntime as ort

    spec = model.spec
    session = ort.InferenceSession(build_graph(spec, model.weights()).SerializeToString())
    worst = 0.0
    for messages, _ in examples[:4]:
        ids = tokenizer.encode(prompt_text(messages)).ids[: spec.context_length]
        feeds = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
        }
        for i in range(spec.layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros(
                    (1, spec.heads, 0, spec.head_size), dtype=np.float32
                )
        onnx_logits = session.run(["logits"], feeds)[0][0]
        with torch.no_grad():
            torch_logits = model(torch.tensor([ids])).numpy()[0]
        worst = max(worst, float(np.abs(onnx_logits - torch_logits).max()))
    return worst


def evaluate(folder: Path, per_type: int) -> dict[str, float]:
    """Exact match per task type on requests whose slots training never saw (the vocabulary's
    ``eval`` part), through the real runtime (LocalBackend)."""
    backend = LocalBackend("eval", folder, max_new_tokens=128, batch_size=8)
    scores = {}
    for task in TASK_TYPES:
        examples = task_examples(task, per_type, EVAL_SEED, part="eval")
        requests = [
            ReplayRequest(f"{task}-{i}", messages, max_tokens=128)
            for i, (messages, _) in enumerate(examples)
        ]
        results: list[ReplayResult] = []
        backend.replay(requests, results.append)
        hits = sum(
            (r.output_text or "").strip() == answer.strip()
            for r, (_, answer) in zip(results, examples, strict=True)
        )
        scores[task] = round(hits / len(examples), 3)
    backend.close()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--only", choices=[r.name for r in RECIPES], default=None)
    parser.add_argument("--eval-per-type", type=int, default=40)
    parser.add_argument("--step-scale", type=float, default=1.0, help="for trial runs only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def log(msg: str) -> None:
        print(msg, flush=True)

    corpus = []
    for task in TASK_TYPES:
        for messages, answer in task_examples(task, 400, TRAIN_SEED):
            corpus.append(prompt_text(messages) + answer + END)
    tokenizer = train_tokenizer(corpus, vocab_size=VOCAB)
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens")

    for recipe in RECIPES:
        if args.only and recipe.name != args.only:
            continue
        if args.step_scale != 1.0:
            recipe = dataclasses.replace(recipe, steps=max(1, int(recipe.steps * args.step_scale)))
        log(f"training {recipe.name}: {asdict(recipe)}")
        model, info = train(recipe, tokenizer, log)
        examples = task_examples(recipe.tasks[0], 4, EVAL_SEED)
        parity = check_parity(model, tokenizer, examples)
        log(f"  parity PyTorch vs ONNX: max |logit diff| {parity:.2e}")
        if parity > 1e-3:
            raise SystemExit(f"{recipe.name}: exported graph disagrees with PyTorch ({parity})")
        root = args.out / recipe.name
        if root.exists():
            shutil.rmtree(root)
        card = {"name": recipe.name, "training": info, "parity_max_abs_logit_diff": parity}
        fp32 = write_model_folder(root / "fp32", model.spec, model.weights(), tokenizer, card)
        quantize_model_folder(fp32, root / "int8", "int8")
        quantize_model_folder(fp32, root / "int4", "int4", block_size=32)
        for variant in ("fp32", "int8", "int4"):
            folder = root / variant
            scores = evaluate(folder, args.eval_per_type)
            log(f"  {recipe.name}/{variant} held-out exact match: {scores}")
            card_path = folder / "planner_model.json"
            data = json.loads(card_path.read_text())
            data["eval_exact_match"] = {
                "per_type": args.eval_per_type,
                "seed": EVAL_SEED,
                "vocabulary_part": "eval",
                "scores": scores,
            }
            card_path.write_text(json.dumps(data, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    log(f"models under {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
