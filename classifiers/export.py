"""ONNX export of the fitted pipeline, and the parity check that guards every export.

The graph takes ONE input, ``text`` (string, shape [N, 1]: ``request_text`` of each request), and
gives ``label`` (string [N]) and ``probabilities`` (float [N, classes], in ``classes`` order).

Per view: onnxruntime's ``Tokenizer`` (the same regular expression as scikit-learn's
token pattern; ``.`` for characters) feeds ``TfIdfVectorizer`` in TFIDF mode with the fitted
vocabulary as its n-gram pool and the idf as its weights. The tail is the algebra of the L2 norm
+ the linear model, rearranged so nothing dense is divided or scaled element-wise: for each view
``tfidf @ W / max(||tfidf||, 1e-12)``, summed over views, plus the intercepts, then softmax.
That is exactly ``predict_proba`` of the pipeline (up to float32 rounding) and is several times
faster than skl2onnx's Normalizer-based graph on wide vocabularies.

With a sentence-encoder view the encoder's own graph is merged in (its names prefixed ``enc_``):
the model then also takes ``input_ids`` and ``attention_mask`` (int64 [N, T], from the encoder's
``tokenizer.json`` over the text after the markers, see ``encoder.py``), and that view adds
``embeddings @ W`` to the logits. One graph; the tokenizer file travels beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from classifiers.encoder import IDS, MASK, tokenize
from classifiers.errors import ExportParityError
from classifiers.features import request_text

if TYPE_CHECKING:  # only a fitted pipeline's methods are used: predicting needs no scikit-learn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

    from classifiers.encoder import SentenceEncoder

OPSET = 18
PARITY_ATOL = 1e-4
INPUT_NAME = "text"
# What the Tokenizer pads shorter rows of a batch with. It must never be a vocabulary entry: a
# visible character such as '#' would be counted as '###' n-grams in every short row of a batch
# with a markdown heading. request_text turns control characters into spaces, so U+0001 is never
# in any text, hence in no n-gram.
PAD = "\x01"

# Always part of the parity check: accents, CJK, kana, hangul, RTL, emoji, markup, odd spacing.
UNICODE_PROBES: tuple[str, ...] = tuple(
    request_text([{"role": "user", "content": text}])
    for text in (
        "Résume ce texte : « Le café crème était très cher à Genève, naïve idée ! »",
        "Übersetze bitte ins Englische: Die Straße ist naß, Ärger über Öl.",
        "请总结以下文章：北京的天气很好，我们去了长城。",
        "次の文章を英語に翻訳してください：東京は大きな都市です。",
        "이 리뷰를 긍정 또는 부정으로 분류하세요: 정말 좋아요!",
        "ترجم هذه الجملة إلى الإنجليزية: أين المحطة؟",
        "Classify this: 😀👍🏽 best purchase ever!!! #happy ## header",
        "İstanbul'da ΣΊΣΥΦΟΣ ﬁnal straße ǅemal — tabs\tand\nnewlines\u00a0nbsp\u3000ideographic",
        '```python\ndef f(x):\n    return {"a": x}  # comment\n```\nWhy does this fail?',
    )
)


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    labels_equal: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "labels_equal": self.labels_equal,
        }


def _pool(vectorizer: TfidfVectorizer) -> tuple[list[str], list[int], list[int], int, int]:
    """(pool_strings, ngram_counts, ngram_indexes, min_n, max_n) of a fitted vectorizer."""
    by_n: dict[int, list[tuple[list[str], int]]] = {}
    char = vectorizer.analyzer == "char"
    for term, column in vectorizer.vocabulary_.items():
        tokens = list(term) if char else term.split(" ")
        by_n.setdefault(len(tokens), []).append((tokens, int(column)))
    min_n = int(vectorizer.ngram_range[0])
    max_n = max(by_n)
    pool: list[str] = []
    counts: list[int] = []
    indexes: list[int] = []
    for n in range(1, max_n + 1):
        counts.append(len(pool))
        for tokens, column in sorted(by_n.get(n, []), key=lambda item: item[1]):
            pool.extend(tokens)
            indexes.append(column)
    return pool, counts, indexes, min(min_n, max_n), max_n


def _view_nodes(
    name: str, vectorizer: TfidfVectorizer, coef: np.ndarray, weight: float
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes computing one view's contribution to the logits: (nodes, initializers, output)."""
    pattern = "." if vectorizer.analyzer == "char" else vectorizer.token_pattern
    pool, counts, indexes, min_n, max_n = _pool(vectorizer)
    idf = vectorizer.idf_.astype(np.float32)
    w = (coef.T * weight).astype(np.float32)
    p = f"{name}_"
    nodes = [
        helper.make_node(
            "Tokenizer",
            [INPUT_NAME],
            [p + "tokens3d"],
            domain="com.microsoft",
            mark=0,
            mincharnum=1,
            pad_value=PAD,
            tokenexp=pattern,
            name=p + "tokenizer",
        ),
        helper.make_node("Flatten", [p + "tokens3d"], [p + "tokens"], axis=1, name=p + "flatten"),
        helper.make_node(
            "TfIdfVectorizer",
            [p + "tokens"],
            [p + "tfidf"],
            mode="TFIDF",
            min_gram_length=min_n,
            max_gram_length=max_n,
            max_skip_count=0,
            ngram_counts=counts,
            ngram_indexes=indexes,
            pool_strings=pool,
            weights=[float(idf[i]) for i in indexes],
            name=p + "tfidf",
        ),
        helper.make_node(
            "ReduceL2", [p + "tfidf", "axis1"], [p + "norm0"], keepdims=1, name=p + "norm"
        ),
        helper.make_node("Max", [p + "norm0", "eps"], [p + "norm"], name=p + "norm_floor"),
        helper.make_node("MatMul", [p + "tfidf", p + "w"], [p + "z"], name=p + "matmul"),
        helper.make_node("Div", [p + "z", p + "norm"], [p + "logits"], name=p + "scale"),
    ]
    inits = [numpy_helper.from_array(w, p + "w")]
    return nodes, inits, p + "logits"


def _encoder_graph(model: bytes) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """The encoder's nodes and initializers, renamed ``enc_*`` except its two inputs."""
    encoder = onnx.load_from_string(model)
    keep = {i.name for i in encoder.graph.input}

    def rename(name: str) -> str:
        return name if (not name or name in keep) else "enc_" + name

    nodes: list[onnx.NodeProto] = []
    for node in encoder.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        del new.output[:]
        new.input.extend(rename(n) for n in node.input)
        new.output.extend(rename(n) for n in node.output)
        new.name = rename(node.name)
        nodes.append(new)
    inits: list[onnx.TensorProto] = []
    for init in encoder.graph.initializer:
        new_init = onnx.TensorProto()
        new_init.CopyFrom(init)
        new_init.name = rename(init.name)
        inits.append(new_init)
    return nodes, inits, rename(encoder.graph.output[0].name)


def export_onnx(
    pipeline: Pipeline, *, doc: str = "", metadata: dict[str, str] | None = None
) -> bytes:
    """The fitted pipeline as ONNX bytes (see the module docstring for the graph)."""
    views = pipeline.named_steps["views"]
    clf = pipeline.named_steps["clf"]
    classes = [str(c) for c in clf.classes_]
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64)
    if len(classes) == 2:  # binary: predict_proba is softmax([0, z])
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    weights = views.transformer_weights or {}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "eps"),
        numpy_helper.from_array(intercept.astype(np.float32), "intercept"),
        numpy_helper.from_array(np.array([c.encode() for c in classes], dtype=object), "classes"),
    ]
    offset = 0
    partials: list[str] = []
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, [None, 1])]
    for name, view in views.transformer_list:
        weight = float(weights.get(name, 1.0))
        if name == "encoder":
            enc_nodes, enc_inits, embeddings = _encoder_graph(view.encoder.model_bytes)
            width = view.encoder.dimensions
            block = coef[:, offset : offset + width]
            offset += width
            nodes += enc_nodes
            inits += enc_inits
            inits.append(numpy_helper.from_array((block.T * weight).astype(np.float32), "enc_w"))
            nodes.append(
                helper.make_node("MatMul", [embeddings, "enc_w"], ["enc_logits"], name="enc_head")
            )
            partials.append("enc_logits")
            inputs += [
                helper.make_tensor_value_info(n, TensorProto.INT64, [None, None])
                for n in (IDS, MASK)
            ]
            continue
        width = len(view.vocabulary_)
        block = coef[:, offset : offset + width]
        offset += width
        view_nodes, view_inits, out = _view_nodes(name, view, block, weight)
        nodes += view_nodes
        inits += view_inits
        partials.append(out)
    nodes.append(helper.make_node("Sum", partials, ["logits0"], name="sum_views"))
    nodes.append(helper.make_node("Add", ["logits0", "intercept"], ["logits"], name="intercept"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    nodes.append(
        helper.make_node("ArgMax", ["logits"], ["label_index"], axis=1, keepdims=0, name="argmax")
    )
    nodes.append(
        helper.make_node("Gather", ["classes", "label_index"], ["label"], axis=0, name="label")
    )
    graph = helper.make_graph(
        nodes,
        "task_type_classifier",
        inputs,
        [
            helper.make_tensor_value_info("label", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(classes)]),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="llm-migration-planner",
        doc_string=doc,
    )
    model.ir_version = 8
    props = {"classes": ",".join(classes), **(metadata or {})}
    helper.set_model_props(model, props)
    data = model.SerializeToString()
    onnx.checker.check_model(data if len(data) < 2_000_000_000 else model)
    return data


def onnx_session(model: bytes | str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnx(
    session: ort.InferenceSession, texts: Sequence[str], tokenizer: Any = None
) -> tuple[list[str], np.ndarray]:
    """(labels, probabilities) for one batch of texts (``tokenizer``: a model with an encoder)."""
    if not texts:
        width = session.get_outputs()[1].shape[1]
        return [], np.zeros((0, width if isinstance(width, int) else 0), dtype=np.float32)
    feed: dict[str, Any] = {INPUT_NAME: np.asarray(texts, dtype=object).reshape(-1, 1)}
    if tokenizer is not None:
        feed[IDS], feed[MASK] = tokenize(tokenizer, texts)
    labels, proba = session.run(["label", "probabilities"], feed)
    return [str(x) for x in labels], np.asarray(proba)


def check_parity(
    pipeline: Pipeline, model: bytes, texts: Sequence[str], *, atol: float = PARITY_ATOL
) -> ParityReport:
    """Labels identical and probabilities within ``atol`` on ``texts`` + the Unicode probes, or
    :class:`ExportParityError` listing the rows that differ."""
    checked = [*texts, *UNICODE_PROBES]
    sk_proba = pipeline.predict_proba(checked)
    sk_labels = [str(x) for x in pipeline.predict(checked)]
    session = onnx_session(model)
    encoder = pipeline_encoder(pipeline)
    tokenizer = encoder.tokenizer if encoder is not None else None
    ox_labels: list[str] = []
    chunks = []
    for i in range(0, len(checked), 256):
        labels, proba = run_onnx(session, checked[i : i + 256], tokenizer)
        ox_labels += labels
        chunks.append(proba)
    ox_proba = np.concatenate(chunks) if chunks else np.zeros_like(sk_proba)
    diffs = np.abs(ox_proba.astype(np.float64) - sk_proba).max(axis=1)
    bad = [i for i in range(len(checked)) if sk_labels[i] != ox_labels[i] or diffs[i] > atol]
    if bad:
        details = [
            {
                "row": i,
                "text": checked[i][:120],
                "sklearn": sk_labels[i],
                "onnx": ox_labels[i],
                "max_abs_diff": float(diffs[i]),
            }
            for i in bad[:20]
        ]
        first = details[0]
        raise ExportParityError(
            f"ONNX export differs from scikit-learn on {len(bad)} of {len(checked)} rows "
            f"(first: row {first['row']}, sklearn {first['sklearn']!r} vs onnx {first['onnx']!r}, "
            f"max |dp| {first['max_abs_diff']:.2e}); export refused",
            bad,
            details,
        )
    return ParityReport(len(checked), float(diffs.max()) if len(diffs) else 0.0, True)


def pipeline_encoder(pipeline: Pipeline) -> SentenceEncoder | None:
    """The sentence encoder of a pipeline's encoder view, or None (an n-gram-only pipeline)."""
    for name, view in pipeline.named_steps["views"].transformer_list:
        if name == "encoder":
            encoder: SentenceEncoder = view.encoder
            return encoder
    return None
