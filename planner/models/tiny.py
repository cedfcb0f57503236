"""Small decoder-only language models as onnxruntime-genai folders, built with ``onnx.helper``.

One graph builder serves random seeded weights (tests, benches) and trained ones
(``scripts/build_demo_models.py`` trains exactly this architecture in PyTorch and hands the
weights here). The architecture, per layer, pre-norm::

    x = embed[input_ids]
    x = x + Wo · softmax(R(Q)·R(K)ᵀ/√d + mask) · V   (Q, K, V from LayerNorm_ln1(x); K after past)
    x = x + W2 · silu(W1 · LayerNorm_ln2(x))
    logits = lm_head · LayerNorm_final(x)

``R`` is the rotary position embedding (rotate-half form, tables ``cos_cache``/``sin_cache``
gathered at ``position_ids``): no position parameters, and relative positions let a small model
learn to copy spans (extraction) quickly.

Weights are stored ``[in, out]`` (``y = x @ W``), with the names of :func:`weight_shapes`. The
KV cache is a plain Concat (``past_present_share_buffer: false`` in ``genai_config.json``); the
attention mask is causal plus the runtime's padding mask, so batched generation works.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from planner.models.folder import clear_output_folder
from planner.models.tiny_tokenizer import (
    END,
    ENDOFTEXT,
    builtin_tokenizer,
    special_token_ids,
    write_tokenizer,
)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
OPSET = 17
LN_EPS = 1e-5


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model. ``vocab_size`` is the tokenizer's; the rest are choices."""

    vocab_size: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 0  # 0: 4 x hidden
    context_length: int = 256
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.head_size % 2:
            raise ValueError(f"head size ({self.head_size}) must be even for rotary embeddings")
        for name in ("vocab_size", "hidden", "layers", "heads", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinySpec.{name} must be >= 1")

    @property
    def ffn_size(self) -> int:
        return self.ffn or 4 * self.hidden

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


def weight_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    """Every weight the graph needs, by name, in the order the graph uses them."""
    h, f = spec.hidden, spec.ffn_size
    shapes: dict[str, tuple[int, ...]] = {
        "embed": (spec.vocab_size, h),
    }
    for i in range(spec.layers):
        p = f"layers.{i}."
        shapes |= {
            p + "ln1.weight": (h,),
            p + "ln1.bias": (h,),
            p + "attn.wq": (h, h),
            p + "attn.wk": (h, h),
            p + "attn.wv": (h, h),
            p + "attn.wo": (h, h),
            p + "ln2.weight": (h,),
            p + "ln2.bias": (h,),
            p + "mlp.w1": (h, f),
            p + "mlp.w2": (f, h),
        }
    shapes |= {"ln_f.weight": (h,), "ln_f.bias": (h,), "lm_head": (h, spec.vocab_size)}
    return shapes


def rope_tables(spec: TinySpec) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of shape [context_length, head_size / 2]: angle = position x theta^(-2i/d)."""
    half = spec.head_size // 2
    inv_freq = 1.0 / (spec.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / spec.head_size))
    angles = np.outer(np.arange(spec.context_length, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def random_weights(spec: TinySpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded small-normal weights (LayerNorms start as identity)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(spec).items():
        if name.endswith(".weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            weights[name] = np.zeros(shape, dtype=np.float32)
        else:
            weights[name] = (rng.standard_normal(shape) * 0.08).astype(np.float32)
    return weights


def _check_weights(spec: TinySpec, weights: dict[str, np.ndarray]) -> None:
    shapes = weight_shapes(spec)
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing or extra:
        raise ValueError(f"weights do not match the spec: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weight {name}: shape {weights[name].shape}, expected {shape}")


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def op(self, op_type: str, inputs: list[str], name: str = "", **attrs: Any) -> str:
        return self.ops(op_type, inputs, 1, [name] if name else None, **attrs)[0]

    def ops(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int,
        names: list[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        self._n += 1
        outs = names or [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        node = helper.make_node(op_type, inputs, outs, name=f"n{self._n}_{op_type}", **attrs)
        self.nodes.append(node)
        return outs

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name


def build_graph(spec: TinySpec, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The decoder as an ONNX model (float32 io, opset 17, no contrib ops)."""
    _check_weights(spec, weights)
    g = _Graph()
    for name in weight_shapes(spec):
        g.const(name, np.ascontiguousarray(weights[name], dtype=np.float32))
    nh, hd, h = spec.heads, spec.head_size, spec.hidden
    g.const("c_zero", np.array(0, dtype=np.int64))
    g.const("c_one", np.array(1, dtype=np.int64))
    g.const("c_axes0", np.array([0], dtype=np.int64))
    g.const("c_axes1", np.array([1], dtype=np.int64))
    g.const("c_axes12", np.array([1, 2], dtype=np.int64))
    g.const("c_split_heads", np.array([0, 0, nh, hd], dtype=np.int64))
    g.const("c_merge_heads", np.array([0, 0, h], dtype=np.int64))
    g.const("c_scale", np.array(1.0 / math.sqrt(hd), dtype=np.float32))
    g.const("c_fzero", np.array(0.0, dtype=np.float32))
    g.const("c_neg", np.array(-1e9, dtype=np.float32))

    # attention bias [B, 1, S, T]: key j visible to query i iff j <= past + i and not padding
    seq = g.op("Shape", ["input_ids"], start=1, end=2)
    total = g.op("Shape", ["attention_mask"], start=1, end=2)
    past = g.op("Sub", [total, seq])
    total_s = g.op("Squeeze", [total, "c_axes0"])
    past_s = g.op("Squeeze", [past, "c_axes0"])
    q_pos = g.op("Range", [past_s, total_s, "c_one"])
    k_pos = g.op("Range", ["c_zero", total_s, "c_one"])
    causal = g.op(
        "LessOrEqual",
        [g.op("Unsqueeze", [k_pos, "c_axes0"]), g.op("Unsqueeze", [q_pos, "c_axes1"])],
    )
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), "c_axes12"])
    allowed = g.op("And", [causal, pad])
    bias = g.op("Where", [allowed, "c_fzero", "c_neg"], name="attn_bias")

    cos_table, sin_table = rope_tables(spec)
    g.const("cos_cache", cos_table)
    g.const("sin_cache", sin_table)
    g.const("c_halves", np.array([hd // 2, hd // 2], dtype=np.int64))
    # [B, 1, S, hd/2]: broadcast over the heads
    cos = g.op("Unsqueeze", [g.op("Gather", ["cos_cache", "position_ids"]), "c_axes1"])
    sin = g.op("Unsqueeze", [g.op("Gather", ["sin_cache", "position_ids"]), "c_axes1"])

    def rotate(t: str) -> str:
        """Rotary embedding of [B, nh, S, hd]: halves (a, b) -> (a cos - b sin, b cos + a sin)."""
        a, b = g.ops("Split", [t, "c_halves"], 2, axis=-1)
        first = g.op("Sub", [g.op("Mul", [a, cos]), g.op("Mul", [b, sin])])
        second = g.op("Add", [g.op("Mul", [b, cos]), g.op("Mul", [a, sin])])
        return g.op("Concat", [first, second], axis=-1)

    x = g.op("Gather", ["embed", "input_ids"])
    for i in range(spec.layers):
        p = f"layers.{i}."
        hx = g.op(
            "LayerNormalization", [x, p + "ln1.weight", p + "ln1.bias"], axis=-1, epsilon=LN_EPS
        )

        def heads(w: str, hx: str = hx) -> str:
            proj = g.op("MatMul", [hx, w])
            return g.op("Transpose", [g.op("Reshape", [proj, "c_split_heads"])], perm=[0, 2, 1, 3])

        q = rotate(heads(p + "attn.wq"))
        k = g.op(
            "Concat",
            [f"past_key_values.{i}.key", rotate(heads(p + "attn.wk"))],
            axis=2,
            name=f"present.{i}.key",
        )
        v = g.op(
            "Concat",
            [f"past_key_values.{i}.value", heads(p + "attn.wv")],
            axis=2,
            name=f"present.{i}.value",
        )
        scores = g.op(
            "Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), "c_scale"]
        )
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        attn = g.op("MatMul", [g.op("Reshape", [ctx, "c_merge_heads"]), p + "attn.wo"])
        x = g.op("Add", [x, attn])
        hx = g.op(
            "LayerNormalization", [x, p + "ln2.weight", p + "ln2.bias"], axis=-1, epsilon=LN_EPS
        )
        up = g.op("MatMul", [hx, p + "mlp.w1"])
        act = g.op("Mul", [up, g.op("Sigmoid", [up])])
        x = g.op("Add", [x, g.op("MatMul", [act, p + "mlp.w2"])])
    x = g.op("LayerNormalization", [x, "ln_f.weight", "ln_f.bias"], axis=-1, epsilon=LN_EPS)
    g.op("MatMul", [x, "lm_head"], name="logits")

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", i64, ["batch_size", "total_sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", f32, ["batch_size", "sequence_length", spec.vocab_size]
        )
    ]
    for i in range(spec.layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}",
                    f32,
                    ["batch_size", nh, "past_sequence_length", hd],
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", f32, ["batch_size", nh, "total_sequence_length", hd]
                )
            )
    graph = helper.make_graph(g.nodes, "tiny_decoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="migration-planner"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def genai_config(spec: TinySpec, eos_ids: list[int], pad_id: int, bos_id: int) -> dict[str, object]:
    """The ``genai_config.json`` onnxruntime-genai reads for this graph."""
    return {
        "model": {
            "bos_token_id": bos_id,
            "context_length": spec.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": spec.head_size,
                "hidden_size": spec.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": spec.heads,
                "num_hidden_layers": spec.layers,
                "num_key_value_heads": spec.heads,
            },
            "eos_token_id": eos_ids,
            "pad_token_id": pad_id,
            "type": "llama",
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": spec.context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def save_onnx(model: onnx.ModelProto, out_dir: Path, name: str = MODEL_FILE) -> None:
    """Writes ``name`` with its weights as external data in ``name + '.data'`` (genai layout)."""
    for stale in (out_dir / name, out_dir / f"{name}.data"):
        stale.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(out_dir / name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{name}.data",
        size_threshold=1024,
    )


def write_model_folder(
    out_dir: Path,
    spec: TinySpec,
    weights: dict[str, np.ndarray],
    tokenizer: Tokenizer,
    extra: dict[str, object] | None = None,
) -> Path:
    """A complete onnxruntime-genai folder: graph + external data, genai config, tokenizer files."""
    if tokenizer.get_vocab_size() != spec.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, the spec says {spec.vocab_size}"
        )
    clear_output_folder(out_dir)
    save_onnx(build_graph(spec, weights), out_dir)
    ids = special_token_ids(tokenizer)
    config = genai_config(spec, [ids[END], ids[ENDOFTEXT]], ids[ENDOFTEXT], ids[ENDOFTEXT])
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    write_tokenizer(tokenizer, out_dir, spec.context_length)
    card = {"architecture": "tiny-decoder", "spec": asdict(spec), **(extra or {})}
    (out_dir / "planner_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return out_dir


def build_tiny_model(
    out_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    context_length: int = 256,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """A random-weight (seeded) tiny model with the built-in tokenizer: for tests and benches."""
    tokenizer = builtin_tokenizer(vocab_size)
    spec = TinySpec(
        vocab_size=tokenizer.get_vocab_size(),
        hidden=hidden,
        layers=layers,
        heads=heads,
        context_length=context_length,
    )
    weights = random_weights(spec, seed)
    # Silence the tokens a random model would otherwise pick now and then: special tokens (so
    # it never stops early: answers are exactly max_tokens long) and byte tokens outside
    # printable ASCII (so answers decode to readable, comparable text).
    weights["lm_head"][:, _unprintable_ids(tokenizer)] = 0.0
    return write_model_folder(
        out_dir, spec, weights, tokenizer, {"weights": f"random, seed {seed}"}
    )


def _unprintable_ids(tokenizer: Tokenizer) -> list[int]:
    ids = []
    for token, token_id in tokenizer.get_vocab().items():
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if token.startswith("<|") or not text or not all(32 <= ord(c) < 127 for c in text):
            ids.append(token_id)
    return sorted(ids)
